package ai.meki.runtime;

import java.io.IOException;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/** Repeated generations of one prompt, reported as stats.schema.json objects (runner "android"). */
public final class BenchRunner {
    private BenchRunner() {}

    /**
     * One warm-up, then reps timed runs of tokens new tokens after prompt.
     * @param packRegion where the pack's bytes are mapped from (null for a dense bundle)
     * @return the last run's stats object; with reps > 1 every run's object is also under "x_runs"
     */
    public static JSONObject run(BundleManifest m, BundleManifest.Backbone backbone, Generator gen, MemoryPack pack,
                                 ProcMemory.Region packRegion, int[] prompt, int tokens, int reps)
            throws IOException, JSONException {
        if (reps < 1) throw new IllegalArgumentException("reps must be >= 1 (got " + reps + ")");
        ProcMemory.Snapshot start = ProcMemory.snapshot();
        gen.generate(prompt, Math.min(tokens, 2), null, null);   // warm-up: loads delegates, first page faults
        JSONArray runs = new JSONArray();
        JSONObject last = null;
        for (int r = 0; r < reps; r++) {
            GenerationStats g = gen.generate(prompt, tokens, null, null);
            last = RunStats.of(m, backbone, g, start, ProcMemory.snapshot(), packResident(pack, packRegion));
            runs.put(last);
        }
        if (reps > 1) last = new JSONObject(last.toString()).put("x_runs", runs);
        return last;
    }

    /** The pack's mapped pages in RAM (smaps) plus its record cache, like MemoryPack.resident_bytes in Python. */
    static long packResident(MemoryPack pack, ProcMemory.Region region) {
        if (pack == null) return 0;
        long mapped = region == null ? 0 : Math.max(0, ProcMemory.residentBytes(region));
        return mapped + pack.cacheInfo().bytes;
    }
}
