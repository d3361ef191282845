package ai.meki.runtime;

import java.util.ArrayList;
import java.util.List;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/** Timings of one generation; field names are those of the Python/native runners' stats JSON. */
public final class GenerationStats {
    public int promptTokens, newTokens;
    public double ttftS, prefillS, decodeS;
    public final List<Double> exposedLookupS = new ArrayList<>();   // per step: prefill chunks, then decodes
    public final List<Integer> tokens = new ArrayList<>();          // generated ids
    public String stopReason = "";                                   // eos | max_tokens | max_seq_len

    public double prefillTokS() { return prefillS > 0 ? promptTokens / prefillS : 0; }

    /** Decode throughput: tokens after the first (which prefill produced) over decode time. */
    public double decodeTokS() { return decodeS > 0 ? Math.max(0, newTokens - 1) / decodeS : 0; }

    public JSONObject toJson() throws JSONException {
        JSONObject o = new JSONObject();
        o.put("prompt_tokens", promptTokens).put("new_tokens", newTokens);
        o.put("ttft_s", ttftS).put("prefill_s", prefillS).put("prefill_tok_s", prefillTokS());
        o.put("decode_s", decodeS).put("decode_tok_s", decodeTokS());
        JSONArray lookups = new JSONArray();
        double total = 0;
        for (double s : exposedLookupS) {
            lookups.put(s);
            total += s;
        }
        o.put("exposed_lookup_s", lookups).put("exposed_lookup_total_s", total);
        JSONArray ids = new JSONArray();
        for (int t : tokens) ids.put(t);
        o.put("tokens", ids).put("stop_reason", stopReason);
        return o;
    }
}
