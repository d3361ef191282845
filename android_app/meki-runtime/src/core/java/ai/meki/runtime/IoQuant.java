package ai.meki.runtime;

import java.util.HashMap;
import java.util.Iterator;
import java.util.Map;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * A quantised (w8a16/w4a16) tflite-qnn graph's integer I/O: the manifest's extra.io_quant,
 * {signature: {tensor: [dtype, scale, zero_point]}} (pipeline/export/qnn_backend.py). The app
 * speaks float; these tensors cross the runner as int16 (short[]). The arithmetic is
 * mobile_runtime/qnn_sim.py's, in float32 as numpy does it: q = clip(rint(x / scale) + zp),
 * x = (q - zp) * scale.
 */
public final class IoQuant {
    /** One tensor's affine int16 encoding. */
    public static final class Param {
        public final float scale;
        public final int zeroPoint;

        Param(float scale, int zeroPoint) {
            this.scale = scale;
            this.zeroPoint = zeroPoint;
        }

        public short[] quantize(float[] x) {
            short[] q = new short[x.length];
            for (int i = 0; i < x.length; i++) {
                float v = (float) Math.rint(x[i] / scale) + zeroPoint;   // float32 divide, half-to-even as np.round
                q[i] = (short) Math.max(Short.MIN_VALUE, Math.min(Short.MAX_VALUE, v));
            }
            return q;
        }

        public float[] dequantize(short[] q) {
            float[] x = new float[q.length];
            for (int i = 0; i < q.length; i++) x[i] = (float) (q[i] - zeroPoint) * scale;
            return x;
        }
    }

    private final Map<String, Map<String, Param>> bySignature = new HashMap<>();

    /** From a backbone's extra (no io_quant: every tensor is float). */
    public IoQuant(BundleManifest.Backbone spec) throws BundleException {
        JSONObject all = spec.extra.optJSONObject("io_quant");
        if (all == null) return;
        String where = "backbone " + spec.file + " extra/io_quant";
        try {
            for (Iterator<String> s = all.keys(); s.hasNext(); ) {
                String sig = s.next();
                Map<String, Param> ps = new HashMap<>();
                JSONObject tensors = all.getJSONObject(sig);
                for (Iterator<String> t = tensors.keys(); t.hasNext(); ) {
                    String name = t.next();
                    JSONArray q = tensors.getJSONArray(name);
                    if (!declaredFloat(spec, sig, name)) continue;   // ids pass through as they are (qnn_sim.py too)
                    if (q.length() != 3 || !"int16".equals(q.get(0))) {
                        throw new BundleException(where + "/" + sig + "/" + name + ": " + q
                                + " (this app takes [\"int16\", scale, zero_point] only)");
                    }
                    double scale = q.getDouble(1);
                    if (!(scale > 0) || Double.isInfinite(scale)) throw new BundleException(where + "/" + sig + "/" + name + ": scale " + scale);
                    ps.put(name, new Param((float) scale, (int) BundleManifest.integerAt(q, 2, Short.MAX_VALUE)));
                }
                bySignature.put(sig, ps);
            }
        } catch (JSONException e) {
            throw new BundleException(where + ": " + e.getMessage());
        }
    }

    /** Whether the manifest declares tensor name of signature sig float32 (quantised ones only are encoded). */
    private static boolean declaredFloat(BundleManifest.Backbone spec, String sig, String name) {
        for (java.util.Map.Entry<String, BundleManifest.MethodSpec> m : spec.methods.entrySet()) {
            if (!(m.getValue().entry.isEmpty() ? m.getKey() : m.getValue().entry).equals(sig)) continue;
            for (java.util.List<BundleManifest.TensorSpec> ts : java.util.Arrays.asList(m.getValue().inputs, m.getValue().outputs)) {
                for (BundleManifest.TensorSpec t : ts) if (t.name.equals(name)) return t.dtype.equals("float32");
            }
        }
        return true;   // a name the manifest does not declare: checked, so a typo is not silently float
    }

    /** The tensor's int16 encoding in signature sig, or null when it is float. */
    public Param of(String sig, String tensor) {
        Map<String, Param> ps = bySignature.get(sig);
        return ps == null ? null : ps.get(tensor);
    }

    public boolean isEmpty() {
        return bySignature.isEmpty();
    }
}
