package ai.meki.runtime;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;

/** Timings of one generation, as plain values; {@link RunStats} turns them into stats.schema.json's object. */
public final class GenerationStats {
    public int promptTokens, newTokens;
    public double ttftS, prefillS, decodeS;
    public double lookupTotalS;                                      // prefill's lookups (synchronous)
    public final List<Double> exposedLookupS = new ArrayList<>();   // per decode step: waiting for the pack rows
    public final List<Double> decodeStepS = new ArrayList<>();      // per decode step: the backbone call alone
    public final List<Integer> tokens = new ArrayList<>();          // generated ids
    public String stopReason = "";                                   // eos | max_tokens | max_seq_len

    public double prefillTokS() { return prefillS > 0 ? promptTokens / prefillS : 0; }

    /** Decode throughput: tokens after the first (which prefill produced) over decode time. */
    public double decodeTokS() { return decodeS > 0 ? Math.max(0, newTokens - 1) / decodeS : 0; }

    public double exposedLookupTotalS() {
        double total = 0;
        for (double s : exposedLookupS) total += s;
        return total;
    }

    /** Median backbone time of one decode step (0 when nothing was decoded). */
    public double decodeStepMedianS() {
        if (decodeStepS.isEmpty()) return 0;
        List<Double> s = new ArrayList<>(decodeStepS);
        Collections.sort(s);
        int n = s.size();
        return n % 2 == 1 ? s.get(n / 2) : (s.get(n / 2 - 1) + s.get(n / 2)) / 2;
    }
}
