package ai.meki.runtime.android;

import ai.meki.runtime.BundleException;
import ai.meki.runtime.BundleManifest;
import ai.meki.runtime.IoCacheProgram;
import ai.meki.runtime.SignatureRunner;
import android.os.Build;
import android.system.ErrnoException;
import android.system.Os;
import com.google.ai.edge.litert.Accelerator;
import com.google.ai.edge.litert.CompiledModel;
import com.google.ai.edge.litert.Environment;
import com.google.ai.edge.litert.LiteRtException;
import com.google.ai.edge.litert.TensorBuffer;
import java.io.IOException;
import java.nio.file.Path;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.Map;

/**
 * A .tflite compiled ahead of time for a Qualcomm NPU (target tflite-qnn: one model per SoC, its
 * graph one DISPATCH_OP holding a QNN context binary) run through LiteRT's CompiledModel API with
 * the NPU accelerator. LiteRT hands the DISPATCH_OP to its Qualcomm dispatch library
 * (libLiteRtDispatch_Qualcomm.so), which loads the QNN HTP runtime (libQnnHtp.so, libQnnSystem.so,
 * libQnnHtpV79Stub.so / V75 on the CPU side, libQnnHtpV79Skel.so / V75 on the DSP); the app ships
 * them as native libraries (android_app/README.md). Wrap it in IoCacheProgram.
 *
 * The KV cache never leaves LiteRT's buffers: each cache tensor has two TensorBuffers, one read
 * and one written by a call, swapped after it (what a call writes, the next one reads). Both are
 * made for the decode signature; prefill's cache tensors have the same names and shapes.
 */
public final class LiteRTProgram implements SignatureRunner {
    /** Where the Hexagon DSP looks for skel libraries, after the app's own library folder. */
    static final String DSP_SYSTEM_PATHS = ";/vendor/dsp/cdsp;/vendor/lib/rfsa/adsp;/system/lib/rfsa/adsp;/dsp";
    private final Environment env;
    private final CompiledModel model;
    private final Map<String, Map<String, TensorBuffer>> inputs = new HashMap<>();   // per signature, cache excluded
    private final Map<String, TensorBuffer> logits = new HashMap<>();                 // per signature
    private Map<String, TensorBuffer> cacheIn = new LinkedHashMap<>(), cacheOut = new LinkedHashMap<>();
    private final Map<String, Integer> cacheSize = new HashMap<>();

    /**
     * @param nativeLibDir the app's extracted native library folder (ApplicationInfo.nativeLibraryDir):
     *        holds the dispatch and QNN libraries
     */
    public LiteRTProgram(Path tflite, BundleManifest.Backbone spec, String nativeLibDir) throws BundleException {
        if (!"tflite".equals(spec.format) && !spec.file.endsWith(".tflite")) {
            throw new BundleException("backbone " + spec.file + " (target " + spec.target + ") is not a .tflite model");
        }
        try {
            Os.setenv("ADSP_LIBRARY_PATH", nativeLibDir + DSP_SYSTEM_PATHS, true);
        } catch (ErrnoException e) {
            throw new BundleException("cannot set ADSP_LIBRARY_PATH: " + e.getMessage());
        }
        Map<Environment.Option, String> opts = new HashMap<>();
        opts.put(Environment.Option.DispatchLibraryDir, nativeLibDir);
        try {
            env = Environment.create(opts);
            model = CompiledModel.create(tflite.toString(), new CompiledModel.Options(Accelerator.NPU), env);
            BundleManifest.MethodSpec decode = spec.methods.get("decode");
            String decodeSig = decode.entry.isEmpty() ? "decode" : decode.entry;
            for (BundleManifest.TensorSpec t : IoCacheProgram.cacheTensors(spec)) {
                cacheIn.put(t.name, model.createInputBuffer(t.name, decodeSig));
                cacheOut.put(t.name, model.createOutputBuffer(t.name, decodeSig));
                long n = 1;
                for (long d : t.shape) n *= d;
                cacheSize.put(t.name, (int) n);
            }
            for (Map.Entry<String, BundleManifest.MethodSpec> e : spec.methods.entrySet()) {
                String sig = e.getValue().entry.isEmpty() ? e.getKey() : e.getValue().entry;
                Map<String, TensorBuffer> in = new LinkedHashMap<>();
                for (BundleManifest.TensorSpec t : e.getValue().inputs) {
                    if (!cacheIn.containsKey(t.name)) in.put(t.name, model.createInputBuffer(t.name, sig));
                }
                inputs.put(sig, in);
                logits.put(sig, model.createOutputBuffer("logits", sig));
            }
        } catch (LiteRtException e) {
            throw new BundleException("LiteRT cannot run " + spec.file + " (compiled for " + spec.soc + ") on the NPU of "
                    + Build.HARDWARE + ": " + e.getMessage() + " (needs libLiteRtDispatch_Qualcomm.so and the QNN HTP "
                    + "libraries of the QAIRT version it was compiled with in " + nativeLibDir + ")");
        }
    }

    @Override
    public float[] run(String signature, Map<String, Object> feeds) throws IOException {
        Map<String, TensorBuffer> in = inputs.get(signature);
        if (in == null) throw new BundleException("model has no signature '" + signature + "'");
        try {
            for (Map.Entry<String, Object> f : feeds.entrySet()) {
                TensorBuffer tb = in.get(f.getKey());
                if (tb == null) throw new BundleException("signature " + signature + " has no input " + f.getKey());
                Object v = f.getValue();
                if (v instanceof float[]) tb.writeFloat((float[]) v);
                else if (v instanceof int[]) tb.writeInt((int[]) v);
                else throw new BundleException(f.getKey() + ": LiteRT takes int32 or float32 here, not " + v.getClass());
            }
            Map<String, TensorBuffer> allIn = new HashMap<>(in), allOut = new HashMap<>(cacheOut);
            allIn.putAll(cacheIn);
            allOut.put("logits", logits.get(signature));
            model.run(allIn, allOut, signature);
            Map<String, TensorBuffer> written = cacheOut;   // the next call reads what this one wrote
            cacheOut = cacheIn;
            cacheIn = written;
            return logits.get(signature).readFloat();
        } catch (LiteRtException e) {
            throw new IOException("LiteRT " + signature + ": " + e.getMessage(), e);
        }
    }

    @Override
    public void resetCache() throws IOException {
        try {
            for (Map.Entry<String, TensorBuffer> c : cacheIn.entrySet()) c.getValue().writeFloat(new float[cacheSize.get(c.getKey())]);
        } catch (LiteRtException e) {
            throw new IOException("LiteRT: cannot clear the KV cache: " + e.getMessage(), e);
        }
    }

    @Override
    public void close() {
        for (Map<String, TensorBuffer> m : inputs.values()) for (TensorBuffer b : m.values()) b.close();
        for (TensorBuffer b : logits.values()) b.close();
        for (TensorBuffer b : cacheIn.values()) b.close();
        for (TensorBuffer b : cacheOut.values()) b.close();
        model.close();
        env.close();
    }
}
