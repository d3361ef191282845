package ai.meki.app;

import ai.meki.runtime.BundleException;
import ai.meki.runtime.BundleManifest;
import ai.meki.runtime.Generator;
import ai.meki.runtime.IoCacheProgram;
import ai.meki.runtime.MemoryPack;
import ai.meki.runtime.ProcMemory;
import ai.meki.runtime.Sampler;
import ai.meki.runtime.SocModels;
import ai.meki.runtime.StepProgram;
import ai.meki.runtime.android.AndroidBundle;
import ai.meki.runtime.android.ExecuTorchProgram;
import ai.meki.runtime.android.LiteRTProgram;
import android.content.Context;
import java.io.Closeable;
import java.io.File;
import java.io.IOException;

/**
 * A loaded bundle: manifest, mapped memory pack, backbone program and the generator over them.
 * executorch-* targets run through ExecuTorch; tflite-* targets (kv_cache "io") through LiteRT's
 * CompiledModel, NPU models picked for this phone's SoC.
 */
final class Session implements Closeable {
    final AndroidBundle bundle;
    final BundleManifest.Backbone backbone;
    final MemoryPack pack;   // null for a dense bundle
    final StepProgram program;
    final ProcMemory.Region packRegion;   // null for a dense bundle
    final Generator generator;

    /** bundlePath: a folder, or "assets" for the bundle packaged in the APK. */
    Session(Context ctx, String bundlePath, String target, Sampler sampler) throws IOException {
        bundle = "assets".equals(bundlePath) ? AndroidBundle.fromAssets(ctx)
                : AndroidBundle.fromDirectory(ctx, new File(bundlePath));
        BundleManifest m = bundle.manifest;
        backbone = SocModels.pick(m, target, AndroidBundle.socModel());
        pack = m.memoryPack == null ? null : bundle.openPack(new MemoryPack.Options());
        packRegion = bundle.packRegion();
        int layers = pack == null ? 0 : pack.numLayers(), dMem = pack == null ? 0 : pack.dMem();
        program = openProgram(ctx, backbone, layers, dMem);
        generator = new Generator(backbone, program, pack, sampler);
    }

    private StepProgram openProgram(Context ctx, BundleManifest.Backbone b, int layers, int dMem) throws IOException {
        if (b.target.startsWith("executorch")) return new ExecuTorchProgram(bundle.filePath(b.file), b, layers, dMem);
        if (b.target.startsWith("tflite")) {
            String libs = ctx.getApplicationInfo().nativeLibraryDir;
            return new IoCacheProgram(b, new LiteRTProgram(bundle.filePath(b.file), b, libs));
        }
        throw new BundleException("target " + b.target + " has no runner in this app (executorch-*, tflite-*)");
    }

    /** "ids:1,2,3" -> token ids. Text needs a Java tokenizer for tokenizer.json, which this app lacks. */
    static int[] parsePrompt(String prompt) throws BundleException {
        if (prompt == null || !prompt.startsWith("ids:")) {
            throw new BundleException("prompt must be token ids as 'ids:1,2,3' (no Java tokenizer yet)");
        }
        String[] parts = prompt.substring(4).split(",");
        int[] ids = new int[parts.length];
        for (int i = 0; i < ids.length; i++) ids[i] = Integer.parseInt(parts[i].trim());
        return ids;
    }

    @Override
    public void close() throws IOException {
        program.close();
        if (pack != null) pack.close();
        bundle.close();
    }
}
