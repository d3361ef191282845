package ai.meki.runtime;

import java.io.IOException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;

/**
 * A backbone whose KV cache is passed in and out (kv_cache "io": LiteRT .tflite, plain or compiled
 * for an NPU), fed as the Python runners feed it. Prefill takes exactly its declared chunk: a
 * shorter one is padded (token 0, zero rows, positions continuing) and {@code last_index} picks
 * the last real token's logits. Two cache contracts (see {@link SignatureRunner}):
 * <ul>
 * <li>whole cache (tflite; mobile_runtime/backends.py LiteRTRunner): the graph writes the padded
 *     chunk into the cache itself, so a chunk whose padded slice would run past max_seq_len goes
 *     through decode one token at a time (the write would be clamped onto earlier positions);</li>
 * <li>split cache (tflite-qnn; mobile_runtime/qnn_sim.py QnnSimRunner): this class keeps the cache
 *     ({@link SplitCache}) and writes only the n real new rows at input_pos[0]; padded positions
 *     are clipped to max_seq_len - 1 (they come after every real query, so causality hides them).</li>
 * </ul>
 * Float tensors named in extra.io_quant cross the runner as int16 ({@link IoQuant}).
 */
public final class IoCacheProgram implements StepProgram {
    private final BundleManifest.Backbone spec;
    private final SignatureRunner runner;
    private final SplitCache split;   // null: whole-cache contract
    private final IoQuant quant;

    public IoCacheProgram(BundleManifest.Backbone spec, SignatureRunner runner) throws BundleException {
        List<BundleManifest.TensorSpec> whole = wholeCacheTensors(spec);   // refuses a kv_cache "internal" backbone
        this.split = SplitCache.declared(spec) ? new SplitCache(spec) : null;
        if (split == null && whole.isEmpty()) {
            throw new BundleException("backbone " + spec.file + ": decode has no cache tensors (inputs that are also outputs, "
                    + "or extra.kv_cache_tensors/kv_new_tensors)");
        }
        this.quant = new IoQuant(spec);
        for (BundleManifest.TensorSpec t : whole) {
            for (String sig : signatures(spec)) {
                if (quant.of(sig, t.name) != null) throw new BundleException("cache tensor " + t.name + " is int16 in " + sig
                        + ": a whole-cache runner keeps its cache as float32");
            }
        }
        this.spec = spec;
        this.runner = runner;
    }

    /**
     * The whole-cache contract's cache tensors: decode inputs that are also decode outputs of the same
     * name (float32); empty under the split contract (extra.kv_new_tensors), whose cache is an input only.
     */
    public static List<BundleManifest.TensorSpec> wholeCacheTensors(BundleManifest.Backbone spec) throws BundleException {
        if (!"io".equals(spec.kvCache)) {
            throw new BundleException("backbone " + spec.file + " keeps its KV cache inside (kv_cache '" + spec.kvCache
                    + "'): it is not a passed-in cache program");
        }
        BundleManifest.MethodSpec decode = spec.methods.get("decode");
        List<BundleManifest.TensorSpec> cache = new ArrayList<>();
        for (BundleManifest.TensorSpec in : decode.inputs) {
            boolean isOutput = false;
            for (BundleManifest.TensorSpec out : decode.outputs) isOutput |= out.name.equals(in.name);
            if (!isOutput) continue;
            if (!in.dtype.equals("float32")) throw new BundleException("cache tensor " + in.name + " is " + in.dtype + ", not float32");
            cache.add(in);
        }
        if (SplitCache.declared(spec) && !cache.isEmpty()) {
            throw new BundleException("backbone " + spec.file + " declares kv_new_tensors but also returns its cache " + cache.get(0).name);
        }
        return Collections.unmodifiableList(cache);
    }

    /** The program's signature names (a method's entry, else its step name). */
    public static List<String> signatures(BundleManifest.Backbone spec) {
        List<String> out = new ArrayList<>();
        for (Map.Entry<String, BundleManifest.MethodSpec> m : spec.methods.entrySet()) {
            out.add(m.getValue().entry.isEmpty() ? m.getKey() : m.getValue().entry);
        }
        return out;
    }

    @Override
    public float[] step(String method, long[] tokens, long[] inputPos, float[] rows) throws IOException {
        BundleManifest.MethodSpec m = spec.methods.get(method);
        if (m == null) throw new BundleException("backbone has no method '" + method + "'");
        int n = tokens.length, chunk = (int) m.input("tokens").shape[1];
        if (n > chunk) throw new BundleException(method + " chunk of " + n + " tokens > its " + chunk);
        if (inputPos[0] == 0) reset();   // a new sequence: Generator always starts at position 0
        if (split == null && n < chunk && inputPos[0] + chunk > spec.maxSeqLen) return oneByOne(tokens, inputPos, rows);
        if (n < chunk && m.input("last_index") == null) {
            throw new BundleException(method + " has no last_index input, so a chunk of " + n + " < " + chunk + " cannot be padded");
        }
        int rowLen = rows == null ? 0 : rows.length / n;
        long[] tok = Arrays.copyOf(tokens, chunk), pos = new long[chunk];
        for (int i = 0; i < chunk; i++) pos[i] = i < n ? inputPos[i] : inputPos[n - 1] + 1 + (i - n);
        if (split != null) for (int i = n; i < chunk; i++) pos[i] = Math.min(pos[i], spec.maxSeqLen - 1);
        String sig = m.entry.isEmpty() ? method : m.entry;
        Map<String, Object> feeds = new LinkedHashMap<>();
        feeds.put("tokens", ints(tok, m.input("tokens")));
        feeds.put("input_pos", ints(pos, m.input("input_pos")));
        if (rows != null) feeds.put("meki_rows", Arrays.copyOf(rows, chunk * rowLen));
        if (m.input("last_index") != null) feeds.put("last_index", ints(new long[] {n - 1}, m.input("last_index")));
        if (split != null) feeds.putAll(split.tensors());
        Map<String, Object> out = runner.run(sig, encode(sig, feeds));
        if (split != null) {
            Map<String, float[]> rowsOut = new LinkedHashMap<>();
            for (String name : split.newTensors()) rowsOut.put(name, decode(sig, name, out.get(name)));
            split.write(rowsOut, chunk, n, (int) inputPos[0]);
        }
        return decode(sig, "logits", out.get("logits"));
    }

    private void reset() throws IOException {
        if (split != null) split.reset();
        runner.resetCache();
    }

    private float[] oneByOne(long[] tokens, long[] inputPos, float[] rows) throws IOException {
        int rowLen = rows == null ? 0 : rows.length / tokens.length;
        float[] logits = null;
        for (int i = 0; i < tokens.length; i++) {
            float[] r = rows == null ? null : Arrays.copyOfRange(rows, i * rowLen, (i + 1) * rowLen);
            logits = step("decode", new long[] {tokens[i]}, new long[] {inputPos[i]}, r);
        }
        return logits;
    }

    /** Float feeds named in io_quant as int16; everything else as it is (ids are never quantised). */
    private Map<String, Object> encode(String sig, Map<String, Object> feeds) {
        Map<String, Object> out = new LinkedHashMap<>();
        for (Map.Entry<String, Object> f : feeds.entrySet()) {
            IoQuant.Param q = quant.of(sig, f.getKey());
            out.put(f.getKey(), q != null && f.getValue() instanceof float[] ? q.quantize((float[]) f.getValue()) : f.getValue());
        }
        return out;
    }

    private float[] decode(String sig, String name, Object v) throws BundleException {
        IoQuant.Param q = quant.of(sig, name);
        if (v instanceof float[] && q == null) return (float[]) v;
        if (v instanceof short[] && q != null) return q.dequantize((short[]) v);
        throw new BundleException(sig + " output " + name + ": got " + (v == null ? "nothing" : v.getClass().getSimpleName())
                + ", expected " + (q == null ? "float[]" : "short[] (int16 per extra.io_quant)"));
    }

    /** Ids in the tensor's declared integer type. */
    private static Object ints(long[] v, BundleManifest.TensorSpec t) throws BundleException {
        if (t.dtype.equals("int64")) return v;
        if (!t.dtype.equals("int32")) throw new BundleException(t.name + " is " + t.dtype + ", expected int32 or int64");
        int[] out = new int[v.length];
        for (int i = 0; i < v.length; i++) out[i] = (int) v[i];
        return out;
    }

    @Override
    public void close() throws IOException {
        runner.close();
    }
}
