package ai.meki.runtime;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.ArrayList;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.TestFactory;
import org.junit.jupiter.api.io.TempDir;

/**
 * The Java readers over conformance/index.json: each case refused with the check name it lists
 * ("ok" when accepted). Same procedure as the Python and C++ runners (conformance/CHECKS.md):
 * pack: open(expected fingerprint) -> lookup(tokens) -> verify() -> rows equal the golden JSON, in
 * MAP and PREAD mode; bundle: BundleManifest.verify(sha256 on) -> open the pack -> PackRef.check.
 */
class ConformanceTest {
    static JSONObject index() throws Exception {
        return new JSONObject(new String(Files.readAllBytes(Golden.conformance().resolve("index.json")), StandardCharsets.UTF_8));
    }

    @TestFactory
    List<DynamicTest> everyCase() throws Exception {
        JSONArray cases = index().getJSONArray("cases");
        List<DynamicTest> tests = new ArrayList<>();
        for (int i = 0; i < cases.length(); i++) {
            JSONObject c = cases.getJSONObject(i);
            String kind = c.getString("kind");
            String want = c.getString("expect").equals("ok") ? "ok" : c.getString("check");
            if (kind.equals("pack")) {
                for (MemoryPack.Mode mode : MemoryPack.Mode.values()) {
                    tests.add(DynamicTest.dynamicTest(c.getString("id") + " " + mode, () -> assertEquals(want, runPack(c, mode))));
                }
            } else if (kind.equals("bundle")) {
                tests.add(DynamicTest.dynamicTest(c.getString("id"), () -> assertEquals(want, runBundle(c))));
            }
        }
        return tests;
    }

    static String runPack(JSONObject c, MemoryPack.Mode mode) throws Exception {
        Path path = Golden.conformance().resolve(c.getString("path"));
        MemoryPack.Options o = new MemoryPack.Options().mode(mode).expectFingerprint(c.optString("fingerprint", null));
        JSONArray t = c.optJSONArray("tokens");
        int[] tokens = new int[t == null ? 1 : t.length()];
        for (int i = 0; t != null && i < tokens.length; i++) tokens[i] = t.getInt(i);
        float[] rows;
        try (MemoryPack p = MemoryPack.open(path, o)) {
            rows = p.lookup(tokens);
            p.verify();
            if (c.has("rows")) {
                JSONObject spec = new JSONObject(new String(Files.readAllBytes(Golden.conformance().resolve(c.getString("rows"))),
                        StandardCharsets.UTF_8));
                JSONArray packs = spec.getJSONArray("packs");
                for (int k = 0; k < packs.length(); k++) {
                    if (!packs.getJSONObject(k).getString("file").equals(path.getFileName().toString())) continue;
                    JSONObject want = packs.getJSONObject(k).getJSONObject("rows");
                    int per = p.floatsPerToken(), m = p.dMem();
                    for (int i = 0; i < tokens.length; i++) {
                        JSONArray layers = want.getJSONArray(Integer.toString(tokens[i]));
                        for (int j = 0; j < per; j++) {
                            if (rows[i * per + j] != (float) layers.getJSONArray(j / m).getDouble(j % m)) return "rows differ";
                        }
                    }
                }
            }
        } catch (PackException e) {
            return e.check;
        }
        return "ok";
    }

    static String runBundle(JSONObject c) throws Exception {
        Path dir = Golden.conformance().resolve(c.getString("path"));
        try {
            BundleManifest m = BundleManifest.verify(dir, true);
            if (m.memoryPack != null) {
                MemoryPack.Options o = new MemoryPack.Options().expectFingerprint(m.fingerprint).cacheBytes(0);
                try (MemoryPack p = MemoryPack.open(dir.resolve(m.memoryPack.file), o)) {
                    m.memoryPack.check(p.header);
                }
            }
        } catch (BundleException e) {
            return e.check;
        } catch (PackException e) {
            return e.check;
        }
        return "ok";
    }

    /** Issue 12, class 2: the file shrinks under an open MAP reader; refused, no SIGBUS, no InternalError. */
    @Test
    void packShrunkWhileMappedIsRefused(@TempDir Path tmp) throws IOException {
        Path p = tmp.resolve("p.mekipack");
        Files.copy(Golden.dir().resolve("golden_int8_token.mekipack"), p, StandardCopyOption.REPLACE_EXISTING);
        try (MemoryPack pack = MemoryPack.open(p, new MemoryPack.Options().mode(MemoryPack.Mode.MAP).cacheBytes(0))) {
            pack.lookup(new int[] {0});
            try (RandomAccessFile f = new RandomAccessFile(p.toFile(), "rw")) {
                f.setLength(16384);
            }
            for (int tok : new int[] {99, 0}) {   // an unverified block, then the verified one again
                PackException e = assertThrows(PackException.class, () -> pack.lookup(new int[] {tok}));
                assertEquals("pack.file_size", e.check, e.getMessage());
            }
        }
    }
}
