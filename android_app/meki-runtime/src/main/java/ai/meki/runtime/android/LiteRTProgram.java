package ai.meki.runtime.android;

import ai.meki.runtime.BundleException;
import ai.meki.runtime.BundleManifest;
import ai.meki.runtime.IoCacheProgram;
import ai.meki.runtime.IoQuant;
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
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
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
 * KV cache: under tflite-qnn's split contract (extra.kv_new_tensors) the cache kv_k_i/kv_v_i is an
 * ordinary input that IoCacheProgram feeds every call and k_new_i/v_new_i are outputs read back
 * with the logits. LiteRT's Java TensorBuffer (2.3.0) writes and reads whole tensors only, so the
 * cache crosses JNI every step. Under the whole-cache contract (plain tflite: cache tensors are
 * inputs and outputs of the same name) the cache never leaves LiteRT: each cache tensor has two
 * TensorBuffers, one read and one written by a call, swapped after it.
 *
 * int16 tensors (quantised graphs, extra.io_quant): inputs are written as their little-endian bytes
 * through writeInt8 (its JNI copies bytes, no element-type check); outputs cannot be read (readInt8
 * reads one byte per element, there is no int16 read), so a graph with int16 outputs is refused.
 */
public final class LiteRTProgram implements SignatureRunner {
    /** Where the Hexagon DSP looks for skel libraries, after the app's own library folder. */
    static final String DSP_SYSTEM_PATHS = ";/vendor/dsp/cdsp;/vendor/lib/rfsa/adsp;/system/lib/rfsa/adsp;/dsp";
    private final Environment env;
    private final CompiledModel model;
    private final Map<String, Map<String, TensorBuffer>> inputs = new HashMap<>();    // per signature, whole cache excluded
    private final Map<String, Map<String, TensorBuffer>> outputs = new HashMap<>();   // per signature, whole cache excluded
    private Map<String, TensorBuffer> cacheIn = new LinkedHashMap<>(), cacheOut = new LinkedHashMap<>();
    private final Map<String, Integer> cacheSize = new HashMap<>();

    /**
     * @param nativeLibDir the app's extracted native library folder (ApplicationInfo.nativeLibraryDir):
     *        holds the dispatch and QNN libraries
     */
    public LiteRTProgram(Path tflite, BundleManifest.Backbone spec, String nativeLibDir) throws BundleException {
        if (!spec.file.endsWith(".tflite")) {
            throw new BundleException("backbone " + spec.file + " (target " + spec.target + ") is not a .tflite model");
        }
        refuseInt16Outputs(spec);
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
            for (BundleManifest.TensorSpec t : IoCacheProgram.wholeCacheTensors(spec)) {
                cacheIn.put(t.name, model.createInputBuffer(t.name, decodeSig));
                cacheOut.put(t.name, model.createOutputBuffer(t.name, decodeSig));
                long n = 1;
                for (long d : t.shape) n *= d;
                cacheSize.put(t.name, (int) n);
            }
            for (Map.Entry<String, BundleManifest.MethodSpec> e : spec.methods.entrySet()) {
                String sig = e.getValue().entry.isEmpty() ? e.getKey() : e.getValue().entry;
                Map<String, TensorBuffer> in = new LinkedHashMap<>(), out = new LinkedHashMap<>();
                for (BundleManifest.TensorSpec t : e.getValue().inputs) {
                    if (!cacheIn.containsKey(t.name)) in.put(t.name, model.createInputBuffer(t.name, sig));
                }
                for (BundleManifest.TensorSpec t : e.getValue().outputs) {
                    if (!cacheOut.containsKey(t.name)) out.put(t.name, model.createOutputBuffer(t.name, sig));
                }
                inputs.put(sig, in);
                outputs.put(sig, out);
            }
        } catch (LiteRtException e) {
            throw new BundleException("LiteRT cannot run " + spec.file + " (compiled for " + spec.soc + ") on the NPU of "
                    + Build.HARDWARE + ": " + e.getMessage() + " (needs libLiteRtDispatch_Qualcomm.so and the QNN HTP "
                    + "libraries of the QAIRT version it was compiled with in " + nativeLibDir + ")");
        }
    }

    /** A quantised graph's int16 outputs have no read in LiteRT's Java API: say so before loading anything. */
    static void refuseInt16Outputs(BundleManifest.Backbone spec) throws BundleException {
        IoQuant quant = new IoQuant(spec);
        for (Map.Entry<String, BundleManifest.MethodSpec> e : spec.methods.entrySet()) {
            String sig = e.getValue().entry.isEmpty() ? e.getKey() : e.getValue().entry;
            for (BundleManifest.TensorSpec t : e.getValue().outputs) {
                if (quant.of(sig, t.name) != null) {
                    throw new BundleException("backbone " + spec.file + " (quant " + spec.quant + ") returns " + t.name
                            + " as int16 (extra.io_quant), which LiteRT 2.3.0's TensorBuffer cannot read (readInt8 reads one "
                            + "byte per element); use a quant none tflite-qnn export on the phone");
                }
            }
        }
    }

    @Override
    public Map<String, Object> run(String signature, Map<String, Object> feeds) throws IOException {
        Map<String, TensorBuffer> in = inputs.get(signature);
        if (in == null) throw new BundleException("model has no signature '" + signature + "'");
        try {
            for (Map.Entry<String, Object> f : feeds.entrySet()) {
                TensorBuffer tb = in.get(f.getKey());
                if (tb == null) throw new BundleException("signature " + signature + " has no input " + f.getKey());
                Object v = f.getValue();
                if (v instanceof float[]) tb.writeFloat((float[]) v);
                else if (v instanceof int[]) tb.writeInt((int[]) v);
                else if (v instanceof short[]) tb.writeInt8(littleEndian((short[]) v));
                else throw new BundleException(f.getKey() + ": LiteRT takes int32, int16 or float32 here, not " + v.getClass());
            }
            Map<String, TensorBuffer> allIn = new HashMap<>(in), allOut = new HashMap<>(outputs.get(signature));
            allIn.putAll(cacheIn);
            allOut.putAll(cacheOut);
            model.run(allIn, allOut, signature);
            Map<String, TensorBuffer> written = cacheOut;   // the next call reads what this one wrote
            cacheOut = cacheIn;
            cacheIn = written;
            Map<String, Object> got = new LinkedHashMap<>();
            for (Map.Entry<String, TensorBuffer> o : outputs.get(signature).entrySet()) got.put(o.getKey(), o.getValue().readFloat());
            return got;
        } catch (LiteRtException e) {
            throw new IOException("LiteRT " + signature + ": " + e.getMessage(), e);
        }
    }

    /** int16 values as the bytes of a little-endian int16 tensor (arm64 and x86 are little-endian). */
    static byte[] littleEndian(short[] v) {
        ByteBuffer b = ByteBuffer.allocate(2 * v.length).order(ByteOrder.LITTLE_ENDIAN);
        b.asShortBuffer().put(v);
        return b.array();
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
        for (Map<String, TensorBuffer> m : outputs.values()) for (TensorBuffer b : m.values()) b.close();
        for (TensorBuffer b : cacheIn.values()) b.close();
        for (TensorBuffer b : cacheOut.values()) b.close();
        model.close();
        env.close();
    }
}
