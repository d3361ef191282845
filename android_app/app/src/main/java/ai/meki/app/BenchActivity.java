package ai.meki.app;

import ai.meki.runtime.BenchRunner;
import ai.meki.runtime.RunStats;
import ai.meki.runtime.Sampler;
import android.app.Activity;
import android.content.Intent;
import android.os.Bundle;
import android.util.Log;
import java.io.File;
import java.io.FileOutputStream;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.nio.charset.StandardCharsets;
import org.json.JSONObject;

/**
 * Benchmark entry for the adb harness:
 * {@code am start -W -n ai.meki.app/.BenchActivity --es bundle PATH|assets --es prompt ids:1,2,3
 * --ei tokens N --ei reps R [--es target executorch-xnnpack] [--es out NAME.json]}.
 * Writes the stats JSON (contract/stats.schema.json: the last run's object, every run under
 * "x_runs" when reps > 1; on failure the schema's error object) to files/NAME.json (default
 * bench.json) atomically, logs "MEKI_BENCH_DONE <path>" (or "MEKI_BENCH_FAILED <msg>") and finishes.
 */
public final class BenchActivity extends Activity {
    static final String TAG = "MekiBench";

    @Override
    protected void onCreate(Bundle saved) {
        super.onCreate(saved);
        Intent in = getIntent();
        String bundle = in.getStringExtra("bundle"), prompt = in.getStringExtra("prompt");
        String target = in.hasExtra("target") ? in.getStringExtra("target") : "executorch-xnnpack";
        String outName = in.hasExtra("out") ? in.getStringExtra("out") : "bench.json";
        int tokens = in.getIntExtra("tokens", 64), reps = in.getIntExtra("reps", 3);
        final File out = new File(getFilesDir(), outName);
        new Thread(new Runnable() {   // not a lambda: Debian's dx (scripts/debian_apk.sh) cannot desugar lambdas
            @Override
            public void run() {
                bench(bundle, target, prompt, tokens, reps, out);
            }
        }, "meki-bench").start();
    }

    private void bench(String bundle, String target, String prompt, int tokens, int reps, File out) {
        JSONObject result;
        try (Session s = new Session(this, bundle == null ? "assets" : bundle, target, Sampler.greedy())) {
            result = BenchRunner.run(s.bundle.manifest, s.backbone, s.generator, s.pack, s.packRegion,
                    Session.parsePrompt(prompt), tokens, reps);
        } catch (Exception | LinkageError e) {   // LinkageError: a native runtime (ExecuTorch, LiteRT, QNN) missing
            Log.e(TAG, "MEKI_BENCH_FAILED " + e);
            result = RunStats.error(e);
        }
        try {
            File tmp = new File(out.getPath() + ".partial");
            try (Writer w = new OutputStreamWriter(new FileOutputStream(tmp), StandardCharsets.UTF_8)) {
                w.write(result.toString(2));
            }
            if (!tmp.renameTo(out)) throw new java.io.IOException("rename " + tmp + " -> " + out);
            Log.i(TAG, "MEKI_BENCH_DONE " + out.getAbsolutePath());
        } catch (Exception e) {
            Log.e(TAG, "MEKI_BENCH_FAILED cannot write " + out + ": " + e);
        }
        runOnUiThread(new Runnable() {
            @Override
            public void run() {
                finish();
            }
        });
    }
}
