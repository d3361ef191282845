package ai.meki.runtime.android;

import ai.meki.runtime.BundleException;
import ai.meki.runtime.BundleManifest;
import ai.meki.runtime.StepProgram;
import java.io.IOException;
import java.nio.file.Path;
import org.pytorch.executorch.EValue;
import org.pytorch.executorch.Module;
import org.pytorch.executorch.Tensor;

/**
 * A .pte backbone through the ExecuTorch Android API. Inputs as the manifest names them:
 * tokens [1, T] int64, input_pos [T] int64, meki_rows [1, T, L, m] float32 (MeKi only);
 * output logits [1, V] float32. The KV cache lives in the program (kv_cache "internal").
 */
public final class ExecuTorchProgram implements StepProgram {
    private final Module module;
    private final BundleManifest.Backbone spec;
    private final int numLayers, dMem;

    public ExecuTorchProgram(Path pte, BundleManifest.Backbone spec, int numLayers, int dMem) throws BundleException {
        if (!spec.target.startsWith("executorch")) {
            throw new BundleException("backbone target '" + spec.target + "' is not an ExecuTorch program");
        }
        if (!"internal".equals(spec.kvCache)) {
            throw new BundleException("kv_cache '" + spec.kvCache + "' is not supported here (only 'internal')");
        }
        this.module = Module.load(pte.toString());
        this.spec = spec;
        this.numLayers = numLayers;
        this.dMem = dMem;
    }

    @Override
    public float[] step(String method, long[] tokens, long[] inputPos, float[] rows) throws IOException {
        BundleManifest.MethodSpec m = spec.methods.get(method);
        if (m == null) throw new BundleException("backbone has no method '" + method + "'");
        int t = tokens.length;
        Tensor tok = Tensor.fromBlob(tokens, new long[] {1, t});
        Tensor pos = Tensor.fromBlob(inputPos, new long[] {t});
        EValue[] args = rows == null
                ? new EValue[] {EValue.from(tok), EValue.from(pos)}
                : new EValue[] {EValue.from(tok), EValue.from(pos),
                        EValue.from(Tensor.fromBlob(rows, new long[] {1, t, numLayers, dMem}))};
        EValue[] out = module.execute(m.entry.isEmpty() ? method : m.entry, args);
        return out[0].toTensor().getDataAsFloatArray();
    }

    @Override
    public void close() {
        module.destroy();
    }
}
