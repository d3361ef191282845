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
import java.util.Collections;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.jupiter.api.Test;

/**
 * KV cache passed in and out: a tflite-qnn bundle (one model per SoC in extra.soc, split cache,
 * optionally int16 I/O) fed as mobile_runtime/qnn_sim.py's QnnSimRunner feeds it, and a plain tflite
 * backbone (whole cache in and out) fed as mobile_runtime/backends.py's LiteRTRunner feeds it.
 */
class IoCacheProgramTest {
    static final int V = 100, L = 3, M = 16, P = 4, S = 14, H = 2, D = 4;

    static JSONObject tensor(String name, String dtype, int... shape) throws Exception {
        JSONArray s = new JSONArray();
        for (int d : shape) s.put(d);
        return new JSONObject().put("name", name).put("dtype", dtype).put("shape", s);
    }

    /** A plain tflite signature: the whole cache kv_* is an input and an output of the same name. */
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

    /** A tflite-qnn signature as npu_graph.npu_signature_specs writes it: cache in, the chunk's new rows out. */
    static JSONObject splitSignature(String entry, int t) throws Exception {
        JSONArray in = new JSONArray().put(tensor("tokens", "int32", 1, t)).put(tensor("input_pos", "int32", t))
                .put(tensor("meki_rows", "float32", 1, t, L, M));
        if (t > 1) in.put(tensor("last_index", "int32", 1));
        JSONArray out = new JSONArray().put(tensor("logits", "float32", 1, V));
        for (String kind : new String[] {"k", "v"}) {
            in.put(tensor("kv_" + kind + "_0", "float32", 1, H, S, D));
            out.put(tensor(kind + "_new_0", "float32", 1, H, t, D));
        }
        return new JSONObject().put("inputs", in).put("outputs", out).put("entry", entry);
    }

    static final float Q_SCALE = 0.25f;
    static final int Q_ZERO = 7;

    /** extra.io_quant of a w8a16 export: every float tensor int16 with one (scale, zero point). */
    static JSONObject ioQuant() throws Exception {
        JSONObject all = new JSONObject();
        for (String sig : new String[] {"prefill", "decode"}) {
            JSONObject t = new JSONObject();
            for (String name : new String[] {"meki_rows", "kv_k_0", "kv_v_0", "logits", "k_new_0", "v_new_0"}) {
                t.put(name, new JSONArray().put("int16").put((double) Q_SCALE).put(Q_ZERO));
            }
            t.put("tokens", new JSONArray().put("int32").put(1.0).put(0));   // an id tensor: never encoded
            all.put(sig, t);
        }
        return all;
    }

    /** A tflite-qnn backbone as pipeline/export/qnn_backend.py writes it (SoC in extra.soc). */
    static JSONObject qnnBackbone(String soc, String quant) throws Exception {
        JSONObject extra = new JSONObject().put("soc", soc).put("vendor", "qualcomm")
                .put("kv_cache_tensors", new JSONArray().put("kv_k_0").put("kv_v_0"))
                .put("kv_new_tensors", new JSONArray().put("k_new_0").put("v_new_0"))
                .put("kv_write", "the runner writes k_new_i/v_new_i [1, Hkv, T, hd] into kv_k_i/kv_v_i at input_pos");
        if (!quant.equals("none")) extra.put("io_quant", ioQuant());
        return new JSONObject().put("target", "tflite-qnn").put("file", "model_litert_qnn_" + soc.toLowerCase() + "_" + quant + ".tflite")
                .put("quant", quant).put("max_seq_len", S).put("prefill_len", P).put("kv_cache", "io").put("extra", extra)
                .put("methods", new JSONObject().put("prefill", splitSignature("prefill", P)).put("decode", splitSignature("decode", 1)));
    }

    static JSONObject testManifest() throws Exception {
        return new JSONObject(new String(Files.readAllBytes(TestBundle.dir().resolve("manifest.json")), StandardCharsets.UTF_8));
    }

    /**
     * The test bundle's manifest plus: tflite-qnn backbones for SM8650 and SM8750 (and a w8a16 one for
     * SM8750 under target tflite-qnn-w8a16, so picking stays unambiguous) and a plain tflite backbone.
     */
    static BundleManifest qnnManifest() throws Exception {
        JSONObject o = testManifest();
        for (String soc : new String[] {"SM8650", "SM8750"}) o.getJSONArray("backbones").put(qnnBackbone(soc, "none"));
        o.getJSONArray("backbones").put(qnnBackbone("SM8750", "w8a16").put("target", "tflite-qnn-w8a16"));
        o.getJSONArray("backbones").put(new JSONObject().put("target", "tflite").put("file", "model_litert.tflite")
                .put("quant", "none").put("max_seq_len", S).put("prefill_len", P).put("kv_cache", "io")
                .put("extra", new JSONObject().put("kv_cache_tensors", new JSONArray().put("kv_k_0").put("kv_v_0")))
                .put("methods", new JSONObject().put("prefill", signature("prefill", P)).put("decode", signature("decode", 1))));
        return BundleManifest.parse(o.toString());
    }

    /**
     * Whole-cache runner (plain tflite): keeps the cache as a runner must, writes token+1 into k at each
     * position of the (padded) chunk, logits pick (last real token + 1) % V; checks every feed (no cache
     * tensor among them).
     */
    static final class FakeSignatures implements SignatureRunner {
        final MemoryPack pack;
        final float[] k = new float[H * S * D];
        final List<String> calls = new ArrayList<>();

        FakeSignatures(MemoryPack pack) { this.pack = pack; }

        @Override
        public Map<String, Object> run(String sig, Map<String, Object> in) throws java.io.IOException {
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
            return Collections.<String, Object>singletonMap("logits", logits);
        }

        @Override
        public void resetCache() {
            Arrays.fill(k, 0f);
        }

        @Override public void close() {}
    }

    /**
     * Split-cache runner (tflite-qnn, npu_graph.NpuStep's contract): stateless; reads the whole cache
     * from its inputs and checks it holds exactly what the earlier calls returned for real tokens
     * (token+1 + h + d/4 (+0.5 for v) at [h, p, d], zero at and after input_pos[0]); returns k_new/v_new
     * [1, H, T, D] for every row of the chunk, padded rows a poison value that must never reach the
     * cache. With quant, every float tensor crosses as int16 (scale Q_SCALE, zero point Q_ZERO).
     */
    static final class FakeSplitGraph implements SignatureRunner {
        static final float POISON = 77f;
        final MemoryPack pack;
        final boolean quant;
        final int[] history = new int[S];   // token at each position the caller has written, -1: none
        final List<String> calls = new ArrayList<>();

        FakeSplitGraph(MemoryPack pack, boolean quant) {
            this.pack = pack;
            this.quant = quant;
            Arrays.fill(history, -1);
        }

        static float cell(int token, int h, int d, boolean v) {
            return token + 1 + h + d / 4f + (v ? 0.5f : 0f);   // on the int16 grid of Q_SCALE
        }

        float[] in(Map<String, Object> feeds, String name) {
            Object o = feeds.get(name);
            if (!quant) return (float[]) o;
            short[] q = (short[]) o;   // int16 per io_quant, decoded as qnn_sim does
            float[] x = new float[q.length];
            for (int i = 0; i < q.length; i++) x[i] = (q[i] - Q_ZERO) * Q_SCALE;
            return x;
        }

        Object out(float[] x) {
            if (!quant) return x;
            short[] q = new short[x.length];
            for (int i = 0; i < x.length; i++) q[i] = (short) (Math.rint(x[i] / Q_SCALE) + Q_ZERO);
            return q;
        }

        @Override
        public Map<String, Object> run(String sig, Map<String, Object> feeds) throws java.io.IOException {
            int[] tok = (int[]) feeds.get("tokens"), pos = (int[]) feeds.get("input_pos");
            int t = tok.length, last = sig.equals("prefill") ? ((int[]) feeds.get("last_index"))[0] : 0;
            assertEquals(new HashSet<>(Arrays.asList("tokens", "input_pos", "meki_rows", "kv_k_0", "kv_v_0")),
                    new HashSet<>(feeds.keySet()) {{ remove("last_index"); }});
            assertEquals(sig.equals("prefill") ? P : 1, t);
            if (pos[0] == 0) Arrays.fill(history, -1);
            for (int i = 0; i < t; i++) {
                int want = i <= last ? pos[0] + i : Math.min(pos[last] + (i - last), S - 1);   // padded: continuing, clipped
                assertEquals(want, pos[i], "input_pos " + Arrays.toString(pos));
                if (i > last) assertEquals(0, tok[i]);
            }
            float[] rows = in(feeds, "meki_rows"), want = Arrays.copyOf(pack.lookup(Arrays.copyOf(tok, last + 1)), t * L * M);
            if (quant) for (int i = 0; i < want.length; i++) want[i] = (float) (Math.rint(want[i] / Q_SCALE) * Q_SCALE);
            assertArrayEquals(want, rows, 0f);
            float[][] cache = {in(feeds, "kv_k_0"), in(feeds, "kv_v_0")};
            for (int c = 0; c < 2; c++) {
                for (int h = 0; h < H; h++) for (int p = 0; p < S; p++) for (int d = 0; d < D; d++) {
                    float expect = p < pos[0] && history[p] >= 0 ? cell(history[p], h, d, c == 1) : 0f;
                    assertEquals(expect, cache[c][(h * S + p) * D + d], 0f, "cache " + c + " at h" + h + " p" + p + " d" + d);
                }
            }
            float[][] news = {new float[H * t * D], new float[H * t * D]};
            for (int c = 0; c < 2; c++) for (int h = 0; h < H; h++) for (int i = 0; i < t; i++) for (int d = 0; d < D; d++) {
                news[c][(h * t + i) * D + d] = i <= last ? cell(tok[i], h, d, c == 1) : POISON;
            }
            for (int i = 0; i <= last; i++) history[pos[i]] = tok[i];
            calls.add(sig + Arrays.toString(Arrays.copyOf(pos, last + 1)));
            float[] logits = new float[V];
            logits[(tok[last] + 1) % V] = 1f;
            Map<String, Object> o = new java.util.LinkedHashMap<>();
            o.put("logits", out(logits));
            o.put("k_new_0", out(news[0]));
            o.put("v_new_0", out(news[1]));
            return o;
        }

        @Override public void resetCache() {}

        @Override public void close() {}
    }

    @Test
    void picksTheModelOfThisSoc() throws Exception {
        BundleManifest m = qnnManifest();
        assertEquals("model_litert_qnn_sm8750_none.tflite", SocModels.pick(m, "tflite-qnn", "SM8750").file);
        assertEquals("model_litert_qnn_sm8650_none.tflite", SocModels.pick(m, "tflite-qnn", "sm8650").file);
        assertEquals("SM8650", SocModels.pick(m, "tflite-qnn", "SM8650").soc);
        BundleException e = assertThrows(BundleException.class, () -> SocModels.pick(m, "tflite-qnn", "SM8550"));
        assertTrue(e.getMessage().contains("no tflite-qnn model for SoC SM8550 (has: [SM8650, SM8750])"), e.getMessage());
        e = assertThrows(BundleException.class, () -> SocModels.pick(m, "tflite-qnn", null));
        assertTrue(e.getMessage().contains("Build.SOC_MODEL"), e.getMessage());
        assertSame(m.backbone("executorch-xnnpack"), SocModels.pick(m, "executorch-xnnpack", null));
        assertSame(m.backbone("tflite"), SocModels.pick(m, "tflite", "SM8750"));   // no extra.soc: any phone
        e = assertThrows(BundleException.class, () -> SocModels.pick(m, "tflite-mediatek", "MT6989"));
        assertTrue(e.getMessage().contains("has: executorch-xnnpack, tflite-qnn, tflite-qnn, tflite-qnn-w8a16, tflite"), e.getMessage());
    }

    @Test
    void backbonesHaveNoTopLevelSocOrFormat() throws Exception {
        for (String key : new String[] {"soc", "format"}) {
            JSONObject o = testManifest();
            o.getJSONArray("backbones").put(qnnBackbone("SM8750", "none").put(key, key.equals("soc") ? "SM8750" : "tflite"));
            BundleException e = assertThrows(BundleException.class, () -> BundleManifest.parse(o.toString()));
            assertTrue(e.getMessage().contains("unknown key '" + key + "'"), e.getMessage());
        }
        JSONObject o = testManifest();   // extra is free-form: a soc that is not a string is no SoC, not an error
        o.getJSONArray("backbones").put(qnnBackbone("SM8750", "none"));
        o.getJSONArray("backbones").getJSONObject(1).getJSONObject("extra").put("soc", 8750);
        assertEquals(null, BundleManifest.parse(o.toString()).backbone("tflite-qnn").soc);
    }

    @Test
    void wholeCacheGoesInAndOutPrefillIsPaddedTheTailDecodes() throws Exception {
        BundleManifest m = qnnManifest();
        BundleManifest.Backbone b = SocModels.pick(m, "tflite", null);
        try (MemoryPack pack = MemoryPack.open(TestBundle.dir().resolve(m.memoryPack.file), new MemoryPack.Options())) {
            FakeSignatures sigs = new FakeSignatures(pack);
            Generator gen = new Generator(b, new IoCacheProgram(b, sigs), pack, Sampler.greedy());
            GenerationStats s = gen.generate(new int[] {5, 6, 7, 8, 9, 10}, 4, null, null);
            assertEquals(Arrays.asList(11, 12, 13, 14), s.tokens);
            assertEquals(Arrays.asList("prefill[0, 1, 2, 3]", "prefill[4, 5]", "decode[6]", "decode[7]", "decode[8]"), sigs.calls);
            int[] fed = {5, 6, 7, 8, 9, 10, 11, 12, 13};
            for (int p = 0; p < fed.length; p++) assertEquals(fed[p] + 1, sigs.k[p * D], 0f);
            sigs.calls.clear();
            // 13 tokens: the chunk at 12 would write 12..15 into a 14-slot cache, so it decodes instead
            GenerationStats full = gen.generate(new int[] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}, 10, null, null);
            assertEquals(Arrays.asList("prefill[0, 1, 2, 3]", "prefill[4, 5, 6, 7]", "prefill[8, 9, 10, 11]",
                    "decode[12]", "decode[13]"), sigs.calls);
            assertEquals("max_seq_len", full.stopReason);
            assertEquals(Arrays.asList(14, 15), full.tokens);
        }
    }

    /** The split contract, float and int16 I/O: same tokens, same calls as qnn_sim.QnnSimRunner makes. */
    @Test
    void splitCacheWritesTheRealNewRowsAtInputPos() throws Exception {
        BundleManifest m = qnnManifest();
        for (String target : new String[] {"tflite-qnn", "tflite-qnn-w8a16"}) {
            BundleManifest.Backbone b = SocModels.pick(m, target, "SM8750");
            try (MemoryPack pack = MemoryPack.open(TestBundle.dir().resolve(m.memoryPack.file), new MemoryPack.Options())) {
                FakeSplitGraph graph = new FakeSplitGraph(pack, target.endsWith("w8a16"));
                Generator gen = new Generator(b, new IoCacheProgram(b, graph), pack, Sampler.greedy());
                GenerationStats s = gen.generate(new int[] {5, 6, 7, 8, 9, 10}, 4, null, null);
                assertEquals(Arrays.asList(11, 12, 13, 14), s.tokens, target);
                assertEquals(Arrays.asList("prefill[0, 1, 2, 3]", "prefill[4, 5]", "decode[6]", "decode[7]", "decode[8]"), graph.calls);
                graph.calls.clear();
                // 13 tokens: the last chunk (12) is padded with positions clipped to 13, not decoded one by one
                GenerationStats full = gen.generate(new int[] {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13}, 10, null, null);
                assertEquals(Arrays.asList("prefill[0, 1, 2, 3]", "prefill[4, 5, 6, 7]", "prefill[8, 9, 10, 11]",
                        "prefill[12]", "decode[13]"), graph.calls);
                assertEquals("max_seq_len", full.stopReason);
                assertEquals(Arrays.asList(14, 15), full.tokens);
                if (target.equals("tflite-qnn")) {
                    JSONObject stats = BenchRunner.run(m, b, gen, pack, null, new int[] {1, 2, 3}, 3, 1);
                    assertEquals("SM8750", stats.getString("x_soc"));
                    assertEquals("tflite-qnn", stats.getString("target"));
                    StatsOut.write("app_stats_tflite_qnn.json", stats);
                }
            }
        }
    }

    /**
     * Replays tests/apps/test_qnn_split_trace.py's steps (mobile_runtime/qnn_sim.py QnnSimRunner.step
     * driven with a numpy fake graph): IoCacheProgram must feed the same tokens, positions,
     * last_index and cache, float and int16 alike.
     */
    @Test
    void feedsWhatTheSimulatorRunnerFeeds() throws Exception {
        JSONObject trace;
        try (java.io.InputStream in = IoCacheProgramTest.class.getResourceAsStream("/qnn_split_trace.json")) {
            trace = new JSONObject(new String(readAll(in), StandardCharsets.UTF_8));
        }
        assertEquals(H * S * D, trace.getInt("H") * trace.getInt("S") * trace.getInt("D"));
        BundleManifest m = qnnManifest();
        for (String target : new String[] {"tflite-qnn", "tflite-qnn-w8a16"}) {
            final boolean quant = target.endsWith("w8a16");
            final float poison = (float) trace.getDouble("poison");
            final JSONArray got = new JSONArray();
            SignatureRunner graph = new SignatureRunner() {
                @Override
                public Map<String, Object> run(String sig, Map<String, Object> f) {
                    FakeSplitGraph dec = new FakeSplitGraph(null, quant);
                    int[] tok = (int[]) f.get("tokens");
                    int n = f.containsKey("last_index") ? ((int[]) f.get("last_index"))[0] + 1 : 1;
                    JSONObject c = new JSONObject();
                    try {
                        c.put("tokens", new JSONArray(tok)).put("input_pos", new JSONArray((int[]) f.get("input_pos")))
                                .put("last_index", f.containsKey("last_index") ? (Object) (n - 1) : JSONObject.NULL)
                                .put("kv_k_0", new JSONArray(dec.in(f, "kv_k_0"))).put("kv_v_0", new JSONArray(dec.in(f, "kv_v_0")));
                    } catch (org.json.JSONException e) {
                        throw new AssertionError(e);
                    }
                    got.put(c);
                    Map<String, Object> o = new java.util.LinkedHashMap<>();
                    o.put("logits", dec.out(new float[V]));
                    float[][] news = {new float[H * tok.length * D], new float[H * tok.length * D]};
                    for (int k = 0; k < 2; k++) for (int h = 0; h < H; h++) for (int i = 0; i < tok.length; i++) for (int d = 0; d < D; d++) {
                        news[k][(h * tok.length + i) * D + d] = i < n ? FakeSplitGraph.cell(tok[i], h, d, k == 1) : poison;
                    }
                    o.put("k_new_0", dec.out(news[0]));
                    o.put("v_new_0", dec.out(news[1]));
                    return o;
                }

                @Override public void resetCache() {}

                @Override public void close() {}
            };
            IoCacheProgram prog = new IoCacheProgram(SocModels.pick(m, target, "SM8750"), graph);
            JSONArray steps = trace.getJSONArray("steps");
            for (int i = 0; i < steps.length(); i++) {
                JSONArray st = steps.getJSONArray(i), t = st.getJSONArray(1);
                long[] tok = new long[t.length()], pos = new long[t.length()];
                for (int j = 0; j < tok.length; j++) {
                    tok[j] = t.getLong(j);
                    pos[j] = st.getLong(2) + j;
                }
                prog.step(st.getString(0), tok, pos, new float[tok.length * L * M]);
            }
            JSONArray want = trace.getJSONArray("calls");
            assertEquals(want.length(), got.length());
            for (int i = 0; i < want.length(); i++) {
                for (String key : new String[] {"tokens", "input_pos", "last_index", "kv_k_0", "kv_v_0"}) {
                    assertEquals(want.getJSONObject(i).get(key).toString(), got.getJSONObject(i).get(key).toString(),
                            target + " call " + i + " " + key);
                }
            }
        }
    }

    static byte[] readAll(java.io.InputStream in) throws java.io.IOException {
        java.io.ByteArrayOutputStream b = new java.io.ByteArrayOutputStream();
        byte[] buf = new byte[8192];
        for (int n; (n = in.read(buf)) > 0; ) b.write(buf, 0, n);
        return b.toByteArray();
    }

    @Test
    void quantParamsRoundAsNumpy() throws Exception {
        // reference: numpy 2.4.6, np.clip(np.round(x / s) + zp, -32768, 32767).astype(np.int16) and (q - zp) * s in float32
        float[] x = {0.125f, 0.375f, -0.125f, 1.0f, -3.3f, 9000f, -9000f, 0.2f, 0.75f};
        IoQuant.Param a = new IoQuant.Param(0.25f, 7), b = new IoQuant.Param(0.1f, -3);
        assertArrayEquals(new short[] {7, 9, 7, 11, -6, 32767, -32768, 8, 10}, a.quantize(x));
        short[] qb = b.quantize(x);
        assertArrayEquals(new short[] {-2, 1, -4, 7, -36, 32767, -32768, -1, 5}, qb);
        assertArrayEquals(new float[] {0.10000000149011612f, 0.4000000059604645f, -0.10000000149011612f, 1.0f,
                -3.299999952316284f, 3277.0f, -3276.5f, 0.20000000298023224f, 0.800000011920929f}, b.dequantize(qb), 0f);
    }

    @Test
    void refusesBadSplitOrQuantDeclarations() throws Exception {
        BundleManifest m = qnnManifest();
        BundleException e = assertThrows(BundleException.class,
                () -> new IoCacheProgram(m.backbone("executorch-xnnpack"), null));
        assertTrue(e.getMessage().contains("kv_cache 'internal'"), e.getMessage());
        JSONObject o = testManifest();
        JSONObject bad = qnnBackbone("SM8750", "none");
        bad.getJSONObject("extra").put("kv_new_tensors", new JSONArray().put("k_new_0").put("v_new_9"));
        o.getJSONArray("backbones").put(bad);
        e = assertThrows(BundleException.class, () -> new IoCacheProgram(BundleManifest.parse(o.toString()).backbone("tflite-qnn"), null));
        assertTrue(e.getMessage().contains("kv_v_0 has no v_new_0 in kv_new_tensors"), e.getMessage());
        bad.getJSONObject("extra").put("kv_new_tensors", new JSONArray().put("k_new_0").put("v_new_0"))
                .put("io_quant", new JSONObject().put("decode", new JSONObject().put("logits", new JSONArray().put("int8").put(0.5).put(0))));
        e = assertThrows(BundleException.class, () -> new IoCacheProgram(BundleManifest.parse(o.toString()).backbone("tflite-qnn"), null));
        assertTrue(e.getMessage().contains("io_quant/decode/logits"), e.getMessage());
    }
}
