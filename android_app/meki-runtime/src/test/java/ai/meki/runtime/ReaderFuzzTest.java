package ai.meki.runtime;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Random;
import java.util.Set;
import java.util.TreeMap;
import java.util.stream.Collectors;
import java.util.stream.Stream;
import org.json.JSONArray;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Seeded fuzz of the Java readers (issue 12, classes 1 and 8): mutated packs, headers whose fields
 * follow the formulas with 64-bit wrapping arithmetic, mutated manifests. Every input is accepted
 * or refused with PackException / BundleException carrying a CHECKS.md name; any other throwable
 * (ArithmeticException, NegativeArraySizeException, OutOfMemoryError, StackOverflowError) fails.
 */
class ReaderFuzzTest {
    static final long[] INTERESTING = {0, 1, 2, 7, 8, 16, 127, 128, 4096, 16384, 1 << 24, 0x7fffffffL, 0x80000000L,
        0xffffffffL, 0x100000000L, 1L << 62, Long.MAX_VALUE, -1L};
    static final int N = 400;

    static Set<String> checks() throws Exception {
        JSONArray a = ConformanceTest.index().getJSONArray("checks");
        Set<String> out = new HashSet<>();
        for (int i = 0; i < a.length(); i++) out.add(a.getString(i));
        return out;
    }

    static void rehash(byte[] f) {
        if (f.length < 128) return;
        ByteBuffer b = ByteBuffer.wrap(f).order(ByteOrder.LITTLE_ENDIAN);
        b.putLong(120, Xxh3.hash(b, 0, 120));
    }

    static byte[] wrappedHeader(Random r) {
        byte[] f = new byte[16384 + r.nextInt(3) * 4096];
        ByteBuffer b = ByteBuffer.wrap(f).order(ByteOrder.LITTLE_ENDIAN);
        long v = r.nextBoolean() ? 1 + r.nextInt(Integer.MAX_VALUE) : INTERESTING[r.nextInt(18)] & 0xffffffffL;
        long l = r.nextBoolean() ? 1 + r.nextInt(Integer.MAX_VALUE) : INTERESTING[r.nextInt(18)] & 0xffffffffL;
        long m = 8L * (1 + r.nextInt(r.nextBoolean() ? 64 : 1 << 28));
        int d = 1 + r.nextInt(4), lay = r.nextInt(2);
        long g = d == 4 ? 2L << r.nextInt(6) : d == 3 ? m : 0;
        long bs = 4096L << r.nextInt(13);
        long rb = d <= 2 ? 2 * m : d == 3 ? 4 + m : 4 * (m / Math.max(g, 1)) + m / 2;
        long ds = Long.divideUnsigned(v * l * rb + bs - 1, bs) * bs;   // wraps on purpose
        b.put(new byte[] {'M', 'E', 'K', 'I', 'P', 'A', 'C', 'K'}, 0, 8);
        b.putInt(8, 1).putInt(12, 128).putInt(16, (int) v).putInt(20, (int) l).putInt(24, (int) m);
        f[28] = (byte) d;
        f[29] = (byte) lay;
        b.putInt(32, (int) g).putInt(36, (int) (lay == 1 ? rb : l * rb)).putLong(40, 16384).putLong(48, ds);
        b.putInt(56, (int) bs).putInt(60, (int) Long.divideUnsigned(ds, bs)).putLong(64, 16384 + ds)
                .putLong(72, 16384 + ds + 8 * Long.divideUnsigned(ds, bs));
        rehash(f);
        return f;
    }

    static byte[] mutate(byte[] in, Random r) {
        byte[] f = in.clone();
        for (int n = 1 + r.nextInt(4); n-- > 0; ) {
            switch (r.nextInt(5)) {
                case 0: if (f.length > 0) f[r.nextInt(f.length)] ^= (byte) (1 + r.nextInt(255)); break;
                case 1:
                    if (f.length >= 128) {
                        int off = 8 + 4 * r.nextInt(28);
                        ByteBuffer b = ByteBuffer.wrap(f).order(ByteOrder.LITTLE_ENDIAN);
                        if (r.nextBoolean()) b.putInt(off, (int) INTERESTING[r.nextInt(18)]);
                        else b.putLong(Math.min(off, 112), INTERESTING[r.nextInt(18)]);
                    }
                    break;
                case 2: f = java.util.Arrays.copyOf(f, r.nextInt(f.length + 1)); break;
                case 3: f = java.util.Arrays.copyOf(f, f.length + r.nextInt(64)); break;
                default: if (f.length > 16384) f[16384 + r.nextInt(f.length - 16384)] = (byte) r.nextInt(256); break;
            }
        }
        if (r.nextInt(5) != 0) rehash(f);
        return f;
    }

    @Test
    void packReaderRefusesCleanly(@TempDir Path tmp) throws Exception {
        Set<String> names = checks();
        List<byte[]> seeds = new ArrayList<>();
        try (Stream<Path> s = Files.list(Golden.dir())) {
            for (Path p : s.filter(p -> p.toString().endsWith(".mekipack")).sorted().collect(Collectors.toList())) {
                seeds.add(Files.readAllBytes(p));
            }
        }
        Random r = new Random(12);
        TreeMap<String, Integer> seen = new TreeMap<>();
        Path f = tmp.resolve("f.mekipack");
        for (int i = 0; i < N; i++) {
            Files.write(f, mutate(r.nextInt(3) == 0 ? wrappedHeader(r) : seeds.get(r.nextInt(seeds.size())), r));
            for (MemoryPack.Mode mode : MemoryPack.Mode.values()) {
                String got;
                try (MemoryPack p = MemoryPack.open(f, new MemoryPack.Options().mode(mode).cacheBytes(1 << 16))) {
                    p.lookup(new int[] {0, p.vocabSize() - 1});
                    p.verify();
                    got = "ok";
                } catch (PackException e) {
                    got = e.check;
                }
                assertTrue(got.equals("ok") || names.contains(got), got);
                seen.merge(got, 1, Integer::sum);
            }
        }
        System.out.println("java pack fuzz: " + seen);
        assertEquals(2 * N, seen.values().stream().mapToInt(Integer::intValue).sum());
    }

    @Test
    void manifestReaderRefusesCleanly() throws Exception {
        Set<String> names = checks();
        String[] tokens = {"[", "]", "{", "}", "\"", ",", ":", "null", "-1", "1e999", "18446744073709551616", "\"../x\"",
            "\"/etc/passwd\"", "\"a//b\"", "\\u0000", "\u00c3(", "[[[[[[[[", "0.5"};
        List<String> seeds = new ArrayList<>();
        try (Stream<Path> s = Files.list(Golden.conformance().resolve("bundles"))) {
            for (Path d : s.sorted().collect(Collectors.toList())) {
                Path m = d.resolve("manifest.json");
                if (Files.isRegularFile(m) && Files.size(m) < 100_000) seeds.add(new String(Files.readAllBytes(m), StandardCharsets.UTF_8));
            }
        }
        Random r = new Random(12);
        TreeMap<String, Integer> seen = new TreeMap<>();
        for (int i = 0; i < N; i++) {
            StringBuilder t = new StringBuilder(seeds.get(r.nextInt(seeds.size())));
            for (int n = 1 + r.nextInt(4); n-- > 0; ) {
                int at = r.nextInt(t.length() + 1);
                switch (r.nextInt(4)) {
                    case 0: if (at < t.length()) t.setCharAt(at, (char) r.nextInt(256)); break;
                    case 1: t.insert(at, tokens[r.nextInt(tokens.length)]); break;
                    case 2: t.delete(at, Math.min(t.length(), at + r.nextInt(16))); break;
                    default: for (int k = r.nextBoolean() ? 70 : 100; k-- > 0; ) t.insert(at, '['); break;
                }
            }
            String got;
            try {
                BundleManifest.parse(t.toString());
                got = "ok";
            } catch (BundleException e) {
                got = e.check;
            }
            assertTrue(got.equals("ok") || names.contains(got), got);
            seen.merge(got, 1, Integer::sum);
        }
        System.out.println("java manifest fuzz: " + seen);
        assertEquals(N, seen.values().stream().mapToInt(Integer::intValue).sum());
    }
}
