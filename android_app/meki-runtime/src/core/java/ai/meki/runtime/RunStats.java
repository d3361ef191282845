package ai.meki.runtime;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * The app's stats JSON in contract/stats.schema.json's shape (format "meki-run-stats" v1,
 * runner "android"): one object per generation, or an error object when the run failed. The
 * harness (device_tests/runners.py) validates it against that schema and uses it as it is.
 */
public final class RunStats {
    public static final String FORMAT = "meki-run-stats";
    public static final int VERSION = 1;
    public static final String RUNNER = "android";

    private RunStats() {}

    /**
     * One run's stats object.
     * @param packResidentBytes the pack's pages in RAM plus its record cache (0 for a dense bundle)
     */
    public static JSONObject of(BundleManifest m, BundleManifest.Backbone b, GenerationStats g,
                                ProcMemory.Snapshot start, ProcMemory.Snapshot end, long packResidentBytes)
            throws JSONException {
        JSONObject o = header();
        o.put("bundle", m.name).put("target", b.target).put("memory", m.memory);
        o.put("prompt_tokens", g.promptTokens).put("generated_tokens", g.tokens.size()).put("stop_reason", g.stopReason);
        o.put("ttft_s", g.ttftS).put("prefill_s", g.prefillS).put("prefill_tok_s", g.prefillTokS());
        o.put("decode_s", g.decodeS).put("decode_tok_s", g.decodeTokS()).put("decode_step_median_s", g.decodeStepMedianS());
        JSONArray lookups = new JSONArray();
        for (double s : g.exposedLookupS) lookups.put(s);
        double exposed = g.exposedLookupTotalS();
        o.put("exposed_lookup_s", lookups).put("exposed_lookup_total_s", exposed);
        o.put("exposed_lookup_fraction", g.decodeS > 0 ? exposed / g.decodeS : 0.0);
        o.put("lookup_total_s", g.lookupTotalS);
        o.put("rss_start_bytes", bytes(start.rssBytes)).put("rss_end_bytes", bytes(end.rssBytes));
        o.put("rss_peak_bytes", bytes(end.rssPeakBytes)).put("rss_anon_bytes", bytes(end.rssAnonBytes));
        o.put("rss_file_bytes", bytes(end.rssFileBytes)).put("pack_resident_bytes", bytes(packResidentBytes));
        JSONArray ids = new JSONArray();
        for (int t : g.tokens) ids.put(t);
        o.put("tokens", ids).put("text", JSONObject.NULL);   // no Java tokenizer: prompts and outputs are ids
        if (b.soc != null) o.put("x_soc", b.soc);            // the SoC the NPU model was compiled for (this phone's)
        return o;
    }

    /** The object a failed run writes instead: {"error": {"type", "message"}} (schema's error branch). */
    public static JSONObject error(Throwable e) {
        JSONObject o = header();
        try {
            String msg = e.getMessage() == null ? e.toString() : e.getMessage();
            o.put("error", new JSONObject().put("type", e.getClass().getSimpleName()).put("message", msg));
        } catch (JSONException impossible) {
            throw new IllegalStateException(impossible);   // String keys and values never fail
        }
        return o;
    }

    private static JSONObject header() {
        try {
            return new JSONObject().put("format", FORMAT).put("version", VERSION).put("runner", RUNNER);
        } catch (JSONException impossible) {
            throw new IllegalStateException(impossible);
        }
    }

    /** The schema's byte counts are >= 0; a kernel that does not report one gives 0. */
    private static long bytes(long v) {
        return Math.max(0, v);
    }
}
