package ai.meki.runtime;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.util.Arrays;
import java.util.HashSet;
import java.util.Iterator;
import java.util.Set;
import org.json.JSONObject;
import org.junit.jupiter.api.Test;

/** The app's stats object has exactly stats.schema.json's required keys; a failure gives the error object. */
class RunStatsTest {
    static final Set<String> REQUIRED = new HashSet<>(Arrays.asList("runner", "bundle", "target", "memory",
            "prompt_tokens", "generated_tokens", "stop_reason", "ttft_s", "prefill_s", "prefill_tok_s", "decode_s",
            "decode_tok_s", "decode_step_median_s", "exposed_lookup_s", "exposed_lookup_total_s",
            "exposed_lookup_fraction", "lookup_total_s", "rss_start_bytes", "rss_end_bytes", "rss_peak_bytes",
            "rss_anon_bytes", "rss_file_bytes", "pack_resident_bytes", "tokens", "text", "format", "version"));

    @Test
    void runObjectHasTheSchemaKeys() throws Exception {
        BundleManifest m = BundleManifest.verify(TestBundle.dir(), false);
        GenerationStats g = new GenerationStats();
        g.promptTokens = 4;
        g.tokens.addAll(Arrays.asList(5, 6, 7));
        g.newTokens = 3;
        g.ttftS = g.prefillS = 0.5;
        g.decodeS = 1.0;
        g.exposedLookupS.addAll(Arrays.asList(0.1, 0.3));
        g.decodeStepS.addAll(Arrays.asList(0.2, 0.4, 0.3));
        g.stopReason = "max_tokens";
        ProcMemory.Snapshot s = ProcMemory.snapshot();
        JSONObject o = RunStats.of(m, m.backbone("executorch-xnnpack"), g, s, s, 123);
        Set<String> keys = new HashSet<>();
        for (Iterator<String> it = o.keys(); it.hasNext(); ) keys.add(it.next());
        assertEquals(REQUIRED, keys);
        assertEquals(0.4, o.getDouble("exposed_lookup_total_s"), 1e-12);
        assertEquals(0.4, o.getDouble("exposed_lookup_fraction"), 1e-12);
        assertEquals(0.3, o.getDouble("decode_step_median_s"), 1e-12);
        assertEquals(2.0, o.getDouble("decode_tok_s"), 1e-12);
        assertTrue(o.isNull("text"));
        assertTrue(s.rssAnonBytes > 0 && s.rssFileBytes > 0, "Linux reports RssAnon and RssFile");
    }

    @Test
    void failureIsTheErrorObject() throws Exception {
        JSONObject e = RunStats.error(new BundleException("bundle 'x' has no backbone for target 'tflite-qnn'"));
        assertEquals("android", e.getString("runner"));
        assertEquals("BundleException", e.getJSONObject("error").getString("type"));
        assertTrue(e.getJSONObject("error").getString("message").contains("tflite-qnn"));
        assertFalse(e.has("tokens"));
        StatsOut.write("app_error.json", e);
    }
}
