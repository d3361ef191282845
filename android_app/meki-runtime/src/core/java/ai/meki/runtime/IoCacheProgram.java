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
 * for an NPU), as mobile_runtime/backends.py's LiteRTRunner; the signature runner keeps the cache
 * (see {@link SignatureRunner}), this class feeds everything else. Prefill takes
 * exactly its declared chunk: a shorter one is padded (token 0, zero rows, positions continuing)
 * and {@code last_index} picks the last real token's logits; a chunk whose padded slice would run
 * past max_seq_len goes through decode one token at a time (the cache write would be clamped).
 * Cache tensors are the decode inputs that are also outputs of the same name.
 */
public final class IoCacheProgram implements StepProgram {
    private final BundleManifest.Backbone spec;
    private final SignatureRunner runner;

    public IoCacheProgram(BundleManifest.Backbone spec, SignatureRunner runner) throws BundleException {
        cacheTensors(spec);   // refuses a backbone without a passed-in float32 cache
        this.spec = spec;
        this.runner = runner;
    }

    /** The KV cache tensors: decode inputs that are also decode outputs of the same name (float32). */
    public static List<BundleManifest.TensorSpec> cacheTensors(BundleManifest.Backbone spec) throws BundleException {
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
        if (cache.isEmpty()) throw new BundleException("backbone " + spec.file + ": decode has no cache tensors (inputs that are also outputs)");
        return Collections.unmodifiableList(cache);
    }

    @Override
    public float[] step(String method, long[] tokens, long[] inputPos, float[] rows) throws IOException {
        BundleManifest.MethodSpec m = spec.methods.get(method);
        if (m == null) throw new BundleException("backbone has no method '" + method + "'");
        int n = tokens.length, chunk = (int) m.input("tokens").shape[1];
        if (n > chunk) throw new BundleException(method + " chunk of " + n + " tokens > its " + chunk);
        if (inputPos[0] == 0) runner.resetCache();   // a new sequence: Generator always starts at position 0
        if (n < chunk && inputPos[0] + chunk > spec.maxSeqLen) return oneByOne(tokens, inputPos, rows);
        if (n < chunk && m.input("last_index") == null) {
            throw new BundleException(method + " has no last_index input, so a chunk of " + n + " < " + chunk + " cannot be padded");
        }
        int rowLen = rows == null ? 0 : rows.length / n;
        long[] tok = Arrays.copyOf(tokens, chunk), pos = new long[chunk];
        for (int i = 0; i < chunk; i++) pos[i] = i < n ? inputPos[i] : inputPos[n - 1] + 1 + (i - n);
        Map<String, Object> feeds = new LinkedHashMap<>();
        feeds.put("tokens", ints(tok, m.input("tokens")));
        feeds.put("input_pos", ints(pos, m.input("input_pos")));
        if (rows != null) feeds.put("meki_rows", Arrays.copyOf(rows, chunk * rowLen));
        if (m.input("last_index") != null) feeds.put("last_index", ints(new long[] {n - 1}, m.input("last_index")));
        return runner.run(m.entry.isEmpty() ? method : m.entry, feeds);
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
