package ai.meki.runtime;

import java.io.IOException;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/** Repeated generations of one prompt with the stats JSON the adb harness reads (runner "android-app"). */
public final class BenchRunner {
    private BenchRunner() {}

    /**
     * @param prompt token ids; tokens: new tokens per run; reps: timed runs (after one warm-up)
     * @return {"runner", "bundle", "target", "memory", "reps", "runs": [GenerationStats...],
     *          "rss_start_bytes", "rss_end_bytes", "rss_peak_bytes", "pack_mapped_bytes"}
     */
    public static JSONObject run(BundleManifest m, BundleManifest.Backbone backbone, Generator gen, MemoryPack pack,
                                 int[] prompt, int tokens, int reps) throws IOException, JSONException {
        long[] rss0 = ProcMemory.rss();
        gen.generate(prompt, Math.min(tokens, 2), null, null);   // warm-up: loads delegates, first page faults
        JSONArray runs = new JSONArray();
        for (int r = 0; r < reps; r++) runs.put(gen.generate(prompt, tokens, null, null).toJson());
        long[] rss1 = ProcMemory.rss();
        JSONObject o = new JSONObject();
        o.put("runner", "android-app").put("bundle", m.name).put("fingerprint", m.fingerprint);
        o.put("target", backbone.target).put("memory", m.memory).put("reps", reps).put("runs", runs);
        o.put("rss_start_bytes", rss0[0]).put("rss_end_bytes", rss1[0]).put("rss_peak_bytes", rss1[1]);
        o.put("pack_mapped_bytes", pack == null ? 0 : pack.mappedBytes());
        return o;
    }
}
