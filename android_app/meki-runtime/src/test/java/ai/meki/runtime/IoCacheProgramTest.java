package ai.meki.runtime;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.jupiter.api.Test;

/**
 * A tflite-qnn bundle (one model per SoC, KV cache passed in and out): the SoC's model is picked,
 * and IoCacheProgram feeds a LiteRT-like signature runner exactly as mobile_runtime's LiteRTRunner does.
 */
class IoCacheProgramTest {
    static final int V = 100, L = 3, M = 16, P = 4, S = 14, H = 2, D = 4;

    static JSONObject tensor(String name, String dtype, int... shape) throws Exception {
        JSONArray s = new JSONArray();
        for (int d : shape) s.put(d);
        return new JSONObject().put("name", name).put("dtype", dtype).put("shape", s);
    }

    static JSONObject signature(String entry, int t) throws Exception {
        JSONArray in = new JSONArray().put(tensor("tokens", "int32", 1, t)).put(tensor("input_pos", "int32", t))
                .put(tensor("meki_rows", "float32", 1, t, L, M));
        if (t > 1) in.put(tensor("last_index", "int32", 1));
        JSONArray out = new JSONArray().put(tensor("logits", "float32", 1, V));
        for (String kv : new String[] {"kv_k_0", "kv_v_0"}) {
            in.put(tensor(kv, "float32", 1, H, S, D));
            out.put(tensor(kv, "float32", 1, H, S, D));
        }
        return new JSONObject().put("inputs", in).put("outputs", out).put("entry", entry);
    }

    /** The test bundle's manifest plus tflite-qnn backbones compiled for SM8650 and SM8750. */
    static BundleManifest qnnManifest() throws Exception {
        JSONObject o = new JSONObject(new String(Files.readAllBytes(TestBundle.dir().resolve("manifest.json")),
                StandardCharsets.UTF_8));
        for (String soc : new String[] {"SM8650", "SM8750"}) {
            o.getJSONArray("backbones").put(new JSONObject().put("target", "tflite-qnn").put("format", "tflite")
                    .put("soc", soc).put("file", "model_" + soc + ".tflite").put("quant", "fp16").put("max_seq_len", S)
                    .put("prefill_len", P).put("kv_cache", "io").put("methods", new JSONObject()
                            .put("prefill", signature("prefill", P)).put("decode", signature("decode", 1))));
        }
        return BundleManifest.parse(o.toString());
    }

    /**
     * Keeps a cache as a runner must: writes token+1 into k at each real position, logits pick
     * (last real token + 1) % V; checks every feed (no cache tensor among them).
     */
    static final class FakeSignatures implements SignatureRunner {
        final MemoryPack pack;
        final float[] k = new float[H * S * D];
        final List<String> calls = new ArrayList<>();

        FakeSignatures(MemoryPack pack) { this.pack = pack; }

        @Override
        public float[] run(String sig, Map<String, Object> in) throws java.io.IOException {
            int[] tok = (int[]) in.get("tokens"), pos = (int[]) in.get("input_pos");
            float[] rows = (float[]) in.get("meki_rows");
            int t = tok.length, last = sig.equals("prefill") ? ((int[]) in.get("last_index"))[0] : 0;
            assertEquals(sig.equals("prefill") ? P : 1, t);
            assertTrue(pos[0] + t <= S, "a cache write past max_seq_len would be clamped");
            assertTrue(new HashSet<>(Arrays.asList("tokens", "input_pos", "meki_rows", "last_index")).containsAll(in.keySet()),
                    in.keySet().toString());
            for (int p = pos[0]; p < S; p++) assertEquals(0f, k[p * D], "a new sequence starts from a cleared cache");
            int[] real = Arrays.copyOf(tok, last + 1);
            float[] want = Arrays.copyOf(pack.lookup(real), t * L * M);   // padded rows are zero
            assertArrayEquals(want, rows, 0f);
            for (int i = 0; i < t; i++) {
                assertEquals(i == 0 ? pos[0] : pos[i - 1] + 1, pos[i]);
                if (i > last) assertEquals(0, tok[i]);
                else for (int h = 0; h < H; h++) k[(h * S + pos[i]) * D] = tok[i] + 1;
            }
            calls.add(sig + Arrays.toString(Arrays.copyOf(pos, last + 1)));
            float[] logits = new float[V];
            logits[(tok[last] + 1) % V] = 1f;
            return logits;
        }

        @Override
        public void resetCache() {
            Arrays.fill(k, 0f);
        }

        @Override public void close() {}
    }

    @Test
    void picksTheModelOfThisSoc() throws Exception {
        BundleManifest m = qnnManifest();
        assertEquals("model_SM8750.tflite", SocModels.pick(m, "tflite-qnn", "SM8750").file);
        assertEquals("model_SM8650.tflite", SocModels.pick(m, "tflite-qnn", "sm8650").file);
        assertEquals("tflite", SocModels.pick(m, "tflite-qnn", "SM8650").format);
        BundleException e = assertThrows(BundleException.class, () -> SocModels.pick(m, "tflite-qnn", "SM8550"));
        assertTrue(e.getMessage().contains("no tflite-qnn model for SoC SM8550 (has: [SM8650, SM8750])"), e.getMessage());
        e = assertThrows(BundleException.class, () -> SocModels.pick(m, "tflite-qnn", null));
        assertTrue(e.getMessage().contains("Build.SOC_MODEL"), e.getMessage());
        assertSame(m.backbone("executorch-xnnpack"), SocModels.pick(m, "executorch-xnnpack", null));
        e = assertThrows(BundleException.class, () -> SocModels.pick(m, "tflite-mediatek", "MT6989"));
        assertTrue(e.getMessage().contains("has: executorch-xnnpack, tflite-qnn, tflite-qnn"), e.getMessage());
    }

    @Test
    void cacheGoesInAndOutPrefillIsPaddedTheTailDecodes() throws Exception {
        BundleManifest m = qnnManifest();
        BundleManifest.Backbone b = SocModels.pick(m, "tflite-qnn", "SM8750");
        try (MemoryPack pack = MemoryPack.open(TestBundle.dir().resolve(m.memoryPack.file), new MemoryPack.Options())) {
            FakeSignatures sigs = new FakeSignatures(pack);
            IoCacheProgram prog = new IoCacheProgram(b, sigs);
            Generator gen = new Generator(b, prog, pack, Sampler.greedy());
            GenerationStats s = gen.generate(new int[] {5, 6, 7, 8, 9, 10}, 4, null, null);
            assertEquals(Arrays.asList(11, 12, 13, 14), s.tokens);
            assertEquals(Arrays.asList("prefill[0, 1, 2, 3]", "prefill[4, 5]", "decode[6]", "decode[7]", "decode[8]"), sigs.calls);
            float[] k = sigs.k;
            int[] fed = {5, 6, 7, 8, 9, 10, 11, 12, 13};
            for (int p = 0; p < fed.length; p++) assertEquals(fed[p] + 1, k[p * D], 0f);
            sigs.calls.clear();
            // 13 tokens: the chunk at 12 would write 12..15 into a 14-slot cache, so it decodes instead
            GenerationStats full = gen.generate(new int[] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}, 10, null, null);
            assertEquals(Arrays.asList("prefill[0, 1, 2, 3]", "prefill[4, 5, 6, 7]", "prefill[8, 9, 10, 11]",
                    "decode[12]", "decode[13]"), sigs.calls);
            assertEquals("max_seq_len", full.stopReason);
            assertEquals(Arrays.asList(14, 15), full.tokens);
            JSONObject stats = BenchRunner.run(m, b, gen, pack, null, new int[] {1, 2, 3}, 3, 1);
            assertEquals("SM8750", stats.getString("x_soc"));
            assertEquals("tflite-qnn", stats.getString("target"));
            StatsOut.write("app_stats_tflite_qnn.json", stats);
        }
    }

    @Test
    void refusesAnInternalCacheBackbone() throws Exception {
        BundleManifest m = qnnManifest();
        BundleException e = assertThrows(BundleException.class,
                () -> new IoCacheProgram(m.backbone("executorch-xnnpack"), null));
        assertTrue(e.getMessage().contains("kv_cache 'internal'"), e.getMessage());
    }
}
