package ai.meki.app;

import ai.meki.runtime.BenchRunner;
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
 * Writes the stats JSON to files/NAME.json (default bench.json) atomically, logs
 * "MEKI_BENCH_DONE <path>" (or "MEKI_BENCH_FAILED <msg>", with an {"error"} JSON) and finishes.
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
        new Thread(() -> run(bundle, target, prompt, tokens, reps, new File(getFilesDir(), outName)), "meki-bench").start();
    }

    private void run(String bundle, String target, String prompt, int tokens, int reps, File out) {
        JSONObject result;
        try (Session s = new Session(this, bundle == null ? "assets" : bundle, target, Sampler.greedy())) {
            result = BenchRunner.run(s.bundle.manifest, s.backbone, s.generator, s.pack, Session.parsePrompt(prompt),
                    tokens, reps);
        } catch (Exception e) {
            Log.e(TAG, "MEKI_BENCH_FAILED " + e);
            result = new JSONObject();
            try {
                result.put("runner", "android-app").put("error", e.toString());
            } catch (org.json.JSONException ignored) {
                // put() with a String key and value cannot fail
            }
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
        runOnUiThread(this::finish);
    }
}
