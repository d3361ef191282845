package ai.meki.runtime;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.json.JSONArray;

/**
 * The tflite-qnn KV cache contract (pipeline/export/npu_graph.py, mobile_runtime/qnn_sim.py): the
 * graph reads the whole cache as inputs kv_k_i/kv_v_i [1, Hkv, S, hd] (extra.kv_cache_tensors)
 * and returns only the chunk's new rows k_new_i/v_new_i [1, Hkv, T, hd] (extra.kv_new_tensors);
 * this class keeps the cache (float32, as the simulator runner does) and writes the first n (real)
 * rows of each new tensor at input_pos[0]. Padded rows are never written.
 */
public final class SplitCache {
    private final Map<String, float[]> cache = new LinkedHashMap<>();   // kv_k_i -> [1, Hkv, S, hd]
    private final Map<String, String> newOf = new LinkedHashMap<>();     // kv_k_i -> k_new_i
    private final int heads, seq, headDim;

    /** Whether the backbone declares the split contract (extra.kv_new_tensors). */
    public static boolean declared(BundleManifest.Backbone spec) {
        return spec.extra.has("kv_new_tensors");
    }

    public SplitCache(BundleManifest.Backbone spec) throws BundleException {
        String where = "backbone " + spec.file + " extra";
        List<String> cacheNames = names(spec, "kv_cache_tensors"), newNames = names(spec, "kv_new_tensors");
        if (cacheNames.size() != newNames.size() || cacheNames.isEmpty()) {
            throw new BundleException(where + ": " + cacheNames.size() + " kv_cache_tensors but " + newNames.size() + " kv_new_tensors");
        }
        Set<String> news = new HashSet<>(newNames);
        long[] shape = null;
        for (String c : cacheNames) {
            String[] p = c.split("_");   // kv_k_3 <- k_new_3, as qnn_sim.py pairs them
            String n = p.length == 3 && p[0].equals("kv") ? p[1] + "_new_" + p[2] : null;
            if (n == null || !news.contains(n)) throw new BundleException(where + ": cache tensor " + c + " has no " + n + " in kv_new_tensors");
            for (Map.Entry<String, BundleManifest.MethodSpec> m : spec.methods.entrySet()) {
                BundleManifest.TensorSpec in = m.getValue().input(c);
                if (in == null || !hasOutput(m.getValue(), n)) {
                    throw new BundleException("backbone " + spec.file + " " + m.getKey() + ": needs input " + c + " and output " + n);
                }
                if (!in.dtype.equals("float32") || in.shape.length != 4 || (shape != null && !Arrays.equals(shape, in.shape))) {
                    throw new BundleException(c + " is " + in.dtype + Arrays.toString(in.shape) + ": expected float32 [1, Hkv, S, hd], alike for every layer");
                }
                shape = in.shape;
            }
            newOf.put(c, n);
        }
        heads = (int) shape[1];
        seq = (int) shape[2];
        headDim = (int) shape[3];
        if (seq != spec.maxSeqLen) throw new BundleException(where + ": cache length " + seq + " != max_seq_len " + spec.maxSeqLen);
        for (String c : cacheNames) cache.put(c, new float[heads * seq * headDim]);
    }

    private static List<String> names(BundleManifest.Backbone spec, String key) throws BundleException {
        List<String> out = new ArrayList<>();
        JSONArray a = spec.extra.optJSONArray(key);
        if (a == null) throw new BundleException("backbone " + spec.file + " extra/" + key + ": missing or not a list");
        for (int i = 0; i < a.length(); i++) {
            if (!(a.opt(i) instanceof String)) throw new BundleException("backbone " + spec.file + " extra/" + key + "/" + i + ": not a tensor name");
            out.add((String) a.opt(i));
        }
        return out;
    }

    private static boolean hasOutput(BundleManifest.MethodSpec m, String name) {
        for (BundleManifest.TensorSpec t : m.outputs) if (t.name.equals(name)) return true;
        return false;
    }

    /** The cache tensors by name (fed as inputs each call; the runner must not keep them). */
    public Map<String, float[]> tensors() {
        return Collections.unmodifiableMap(cache);
    }

    /** The new-row output names the runner must return. */
    public List<String> newTensors() {
        return new ArrayList<>(newOf.values());
    }

    public void reset() {
        for (float[] c : cache.values()) Arrays.fill(c, 0f);
    }

    /** Write rows 0..n-1 of each new tensor ([1, Hkv, t, hd]) at cache positions start..start+n-1. */
    public void write(Map<String, float[]> outputs, int t, int n, int start) throws BundleException {
        if (start + n > seq) throw new BundleException("positions " + start + ".." + (start + n - 1) + " run past the KV cache (" + seq + ")");
        for (Map.Entry<String, String> e : newOf.entrySet()) {
            float[] rows = outputs.get(e.getValue()), dst = cache.get(e.getKey());
            if (rows == null || rows.length != heads * t * headDim) {
                throw new BundleException("output " + e.getValue() + ": " + (rows == null ? "missing" : rows.length + " values")
                        + ", expected [1, " + heads + ", " + t + ", " + headDim + "]");
            }
            for (int h = 0; h < heads; h++) {
                System.arraycopy(rows, h * t * headDim, dst, (h * seq + start) * headDim, n * headDim);
            }
        }
    }
}
