package ai.meki.runtime;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.json.JSONObject;
import org.junit.jupiter.api.Test;

/** The loop feeds each step the rows of its own tokens, in [1, T, L, m] order, at the right positions. */
class GeneratorTest {
    /** A fake program: checks shapes and rows, then makes token (last + 1) % V the greedy choice. */
    static final class FakeProgram implements StepProgram {
        final MemoryPack pack;
        final BundleManifest.Backbone spec;
        final List<String> calls = new ArrayList<>();

        FakeProgram(MemoryPack pack, BundleManifest.Backbone spec) { this.pack = pack; this.spec = spec; }

        @Override
        public float[] step(String method, long[] tokens, long[] pos, float[] rows) throws java.io.IOException {
            int t = tokens.length;
            assertTrue(method.equals("decode") ? t == 1 : t >= 1 && t <= spec.prefillLen);
            int[] ids = new int[t];
            for (int i = 0; i < t; i++) ids[i] = (int) tokens[i];
            assertArrayEquals(pack.lookup(ids), rows, 0f);
            calls.add(method + Arrays.toString(pos));
            float[] logits = new float[pack.vocabSize()];
            logits[(ids[t - 1] + 1) % logits.length] = 1f;
            return logits;
        }

        @Override public void close() {}
    }

    @Test
    void prefillInChunksThenDecode() throws Exception {
        BundleManifest m = BundleManifest.verify(TestBundle.dir(), true);
        BundleManifest.Backbone b = m.backbone("executorch-xnnpack");
        try (MemoryPack pack = MemoryPack.open(TestBundle.dir().resolve(m.memoryPack.file), new MemoryPack.Options())) {
            FakeProgram prog = new FakeProgram(pack, b);
            Generator gen = new Generator(b, prog, pack, Sampler.greedy());
            List<Integer> seen = new ArrayList<>();
            GenerationStats s = gen.generate(new int[] {5, 6, 7, 8, 9, 10}, 4, m.tokenizer.eosTokenIds, t -> seen.add(t));
            assertEquals(Arrays.asList(11, 12, 13, 14), s.tokens);
            assertEquals(s.tokens, seen);
            assertEquals(Arrays.asList("prefill[0, 1, 2, 3]", "prefill[4, 5]", "decode[6]", "decode[7]", "decode[8]"),
                    prog.calls);
            assertEquals(3, s.exposedLookupS.size());   // one per decode step; prefill's lookups are lookupTotalS
            assertEquals(3, s.decodeStepS.size());
            assertTrue(s.lookupTotalS > 0);
            assertEquals("max_tokens", s.stopReason);
            GenerationStats eos = gen.generate(new int[] {97}, 10, m.tokenizer.eosTokenIds, null);
            assertEquals(Arrays.asList(98, 99), eos.tokens);
            assertEquals("eos", eos.stopReason);
            GenerationStats full = gen.generate(new int[] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14}, 10, null, null);
            assertEquals("max_seq_len", full.stopReason);
            assertEquals(3, full.newTokens);   // positions 14 and 15 decoded, then the cache is full
            ProcMemory.Region region = new ProcMemory.Region(
                    TestBundle.dir().resolve(m.memoryPack.file).toRealPath().toString(), 0, 1L << 40);
            JSONObject bench = BenchRunner.run(m, b, gen, pack, region, new int[] {1, 2, 3}, 3, 2);
            assertEquals(2, bench.getJSONArray("x_runs").length());
            assertEquals("android", bench.getString("runner"));
            assertEquals(3, bench.getInt("generated_tokens"));
            assertTrue(bench.getLong("rss_peak_bytes") > 0);
            assertTrue(bench.getLong("pack_resident_bytes") > 0, "the mapped pack's pages count as resident");
            StatsOut.write("app_stats_reps2.json", bench);
            StatsOut.write("app_stats.json", BenchRunner.run(m, b, gen, pack, region, new int[] {1, 2, 3, 4, 5}, 4, 1));
        }
    }
}
