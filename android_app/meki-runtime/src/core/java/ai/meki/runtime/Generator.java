package ai.meki.runtime;

import java.io.IOException;
import java.util.Arrays;

/**
 * The generation loop over one backbone: prefill (chunks of prefill_len) -> decode one token at
 * a time, each step fed the memory rows of its tokens looked up from the pack.
 * sample -> prefill -> decodeOne -> generate, as in the Python runtime.
 */
public final class Generator {
    /** Called with each new token id; return false to stop. */
    public interface TokenListener {
        boolean onToken(int token);
    }

    private final BundleManifest.Backbone spec;
    private final StepProgram program;
    private final MemoryPack pack;   // null for a dense backbone
    private final Sampler sampler;

    public Generator(BundleManifest.Backbone spec, StepProgram program, MemoryPack pack, Sampler sampler)
            throws BundleException {
        if (spec.takesMekiRows() && pack == null) {
            throw new BundleException("backbone " + spec.file + " takes meki_rows but no memory pack was given");
        }
        this.spec = spec;
        this.program = program;
        this.pack = spec.takesMekiRows() ? pack : null;
        this.sampler = sampler;
    }

    /** rows [1, T, L, m] of tokens (null for a dense backbone); returns how long the lookup took in [0]. */
    private float[] rows(long[] tokens, double[] took) throws PackException {
        took[0] = 0;
        if (pack == null) return null;
        long t0 = System.nanoTime();
        int[] ids = new int[tokens.length];
        for (int i = 0; i < ids.length; i++) ids[i] = (int) tokens[i];
        float[] r = pack.lookup(ids);
        took[0] = (System.nanoTime() - t0) / 1e9;
        return r;
    }

    /** Run the prompt through "prefill" in chunks; returns the logits [V] after the last token. */
    float[] prefill(int[] prompt, GenerationStats stats) throws IOException {
        float[] logits = null;
        for (int start = 0; start < prompt.length; start += spec.prefillLen) {
            int n = Math.min(spec.prefillLen, prompt.length - start);
            long[] toks = new long[n], pos = new long[n];
            for (int i = 0; i < n; i++) {
                toks[i] = prompt[start + i];
                pos[i] = start + i;
            }
            double[] took = new double[1];
            float[] r = rows(toks, took);
            stats.lookupTotalS += took[0];
            logits = program.step("prefill", toks, pos, r);
        }
        return logits;
    }

    /** One decode step for token at position pos; returns logits [V]. The lookup is synchronous: all of it is exposed. */
    float[] decodeOne(int token, int pos, GenerationStats stats) throws IOException {
        long[] toks = {token};
        double[] took = new double[1];
        float[] r = rows(toks, took);
        if (pack != null) stats.exposedLookupS.add(took[0]);
        long t0 = System.nanoTime();
        float[] logits = program.step("decode", toks, new long[] {pos}, r);
        stats.decodeStepS.add((System.nanoTime() - t0) / 1e9);
        return logits;
    }

    /**
     * Generate up to maxNewTokens after prompt; stops at an eos id or the cache's max_seq_len.
     * @param prompt token ids, 1 <= length < max_seq_len
     */
    public GenerationStats generate(int[] prompt, int maxNewTokens, int[] eos, TokenListener listener) throws IOException {
        if (prompt.length == 0 || prompt.length >= spec.maxSeqLen) {
            throw new IllegalArgumentException("prompt has " + prompt.length + " tokens; need 1.." + (spec.maxSeqLen - 1));
        }
        GenerationStats stats = new GenerationStats();
        stats.promptTokens = prompt.length;
        long t0 = System.nanoTime();
        float[] logits = prefill(prompt, stats);
        stats.prefillS = (System.nanoTime() - t0) / 1e9;  // backbone calls and lookups alone
        int[] history = Arrays.copyOf(prompt, spec.maxSeqLen + 1);  // the penalty's look-back; pos stops at maxSeqLen
        int seen = prompt.length;
        int tok = sampler.sample(logits, history, seen);
        long t1 = System.nanoTime();
        stats.ttftS = (t1 - t0) / 1e9;  // prefill + first sample
        int pos = prompt.length;
        stats.stopReason = "max_tokens";
        while (maxNewTokens > 0) {
            stats.tokens.add(tok);
            stats.newTokens++;
            history[seen++] = tok;
            boolean go = listener == null || listener.onToken(tok);
            if (contains(eos, tok)) {
                stats.stopReason = "eos";
                break;
            }
            if (!go || stats.newTokens >= maxNewTokens) break;
            if (pos >= spec.maxSeqLen) {
                stats.stopReason = "max_seq_len";
                break;
            }
            tok = sampler.sample(decodeOne(tok, pos++, stats), history, seen);
        }
        stats.decodeS = (System.nanoTime() - t1) / 1e9;
        return stats;
    }

    private static boolean contains(int[] xs, int x) {
        if (xs != null) for (int v : xs) if (v == x) return true;
        return false;
    }
}
