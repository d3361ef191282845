package ai.meki.runtime;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.channels.FileChannel;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.Arguments;
import org.junit.jupiter.params.provider.MethodSource;

/** Byte-compatibility with the Python reader: every golden row equal, float for float. */
class MemoryPackGoldenTest {
    static List<Arguments> cases() throws Exception {
        List<Arguments> out = new ArrayList<>();
        JSONArray packs = Golden.spec().getJSONArray("packs");
        for (int i = 0; i < packs.length(); i++) {
            for (MemoryPack.Mode mode : MemoryPack.Mode.values()) {
                for (long cache : new long[] {0, 1 << 20}) {
                    out.add(Arguments.of(packs.getJSONObject(i).getString("file"), mode, cache));
                }
            }
        }
        return out;
    }

    static JSONObject entry(String file) throws Exception {
        JSONArray packs = Golden.spec().getJSONArray("packs");
        for (int i = 0; i < packs.length(); i++) {
            if (packs.getJSONObject(i).getString("file").equals(file)) return packs.getJSONObject(i);
        }
        throw new AssertionError(file);
    }

    /** tokens from the JSON, each looked up twice (second time through the cache, if on). */
    @ParameterizedTest(name = "{0} {1} cache={2}")
    @MethodSource("cases")
    void everyRowMatches(String file, MemoryPack.Mode mode, long cache) throws Exception {
        JSONObject spec = Golden.spec(), e = entry(file);
        Path path = Golden.dir().resolve(file);
        assertEquals(e.getString("sha256"), sha256(Files.readAllBytes(path)));
        MemoryPack.Options opts = new MemoryPack.Options().mode(mode).cacheBytes(cache)
                .expectFingerprint(spec.getString("fingerprint"));
        try (MemoryPack pack = MemoryPack.open(path, opts)) {
            assertEquals(e.getString("dtype"), pack.header.dtype.label);
            assertEquals(e.getString("layout"), pack.header.layout.label);
            assertEquals(spec.getInt("vocab_size"), pack.vocabSize());
            JSONArray toks = spec.getJSONArray("tokens");
            int[] tokens = new int[toks.length() * 2];
            for (int i = 0; i < tokens.length; i++) tokens[i] = toks.getInt(i % toks.length());
            float[] got = pack.lookup(tokens);
            for (int i = 0; i < tokens.length; i++) {
                float[] want = expectedRows(e, tokens[i], pack.numLayers(), pack.dMem());
                float[] row = java.util.Arrays.copyOfRange(got, i * want.length, (i + 1) * want.length);
                assertArrayEquals(want, row, 0.0f, file + " token " + tokens[i]);
            }
            pack.verify();
            if (cache > 0) assertEquals(toks.length(), pack.cacheInfo().entries);
        }
    }

    /** The same pack read from inside a bigger file (the APK-asset case): offset, length. */
    @ParameterizedTest(name = "{0} {1} cache={2}")
    @MethodSource("cases")
    void readsFromAnOffsetInsideAnotherFile(String file, MemoryPack.Mode mode, long cache) throws Exception {
        JSONObject spec = Golden.spec(), e = entry(file);
        byte[] pack = Files.readAllBytes(Golden.dir().resolve(file));
        Path outer = Files.createTempFile("meki-apk", ".bin");
        try {
            byte[] all = new byte[16384 + pack.length + 999];
            System.arraycopy(pack, 0, all, 16384, pack.length);
            Files.write(outer, all);
            try (FileChannel ch = FileChannel.open(outer, StandardOpenOption.READ);
                 MemoryPack p = MemoryPack.open(ch, 16384, pack.length, new MemoryPack.Options().mode(mode).cacheBytes(cache))) {
                int tok = spec.getJSONArray("tokens").getInt(4);
                assertArrayEquals(expectedRows(e, tok, p.numLayers(), p.dMem()), p.lookup(new int[] {tok}), 0.0f);
                p.verify();
                assertTrue(mode == MemoryPack.Mode.PREAD || p.mappedBytes() > 0);
            }
        } finally {
            Files.delete(outer);
        }
    }

    @ParameterizedTest(name = "{0} {1} cache={2}")
    @MethodSource("cases")
    void refusesOutOfRangeTokens(String file, MemoryPack.Mode mode, long cache) throws Exception {
        try (MemoryPack p = MemoryPack.open(Golden.dir().resolve(file), new MemoryPack.Options().mode(mode))) {
            assertThrows(PackException.Token.class, () -> p.lookup(new int[] {0, p.vocabSize()}));
            assertThrows(PackException.Token.class, () -> p.lookup(new int[] {-1}));
        }
    }

    static float[] expectedRows(JSONObject entry, int token, int layers, int dMem) throws Exception {
        JSONArray rows = entry.getJSONObject("rows").getJSONArray(Integer.toString(token));
        float[] out = new float[layers * dMem];
        for (int l = 0; l < layers; l++) {
            for (int i = 0; i < dMem; i++) out[l * dMem + i] = (float) rows.getJSONArray(l).getDouble(i);
        }
        return out;
    }

    static String sha256(byte[] data) throws Exception {
        StringBuilder s = new StringBuilder();
        for (byte b : MessageDigest.getInstance("SHA-256").digest(data)) s.append(String.format("%02x", b & 0xFF));
        return s.toString();
    }
}
