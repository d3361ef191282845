package ai.meki.runtime;

import java.util.Arrays;
import java.util.Random;

/**
 * Picks the next token from logits [V]: greedy at temperature 0, else softmax sampling; optionally with
 * llama.cpp's repetition penalty (CTRL's: a recent token's logit divided by the penalty when positive,
 * multiplied by it when negative) over the last {@code lastN} tokens, prompt included.
 */
public final class Sampler {
    private final float temperature;
    private final float repeatPenalty;
    private final int lastN;
    private final Random rng;

    public Sampler(float temperature, long seed) {
        this(temperature, seed, 1f, 0);
    }

    public Sampler(float temperature, long seed, float repeatPenalty, int lastN) {
        if (!(temperature >= 0f) || !(repeatPenalty > 0f) || lastN < 0) {
            throw new IllegalArgumentException("invalid sampling settings: temperature " + temperature
                    + ", repeat penalty " + repeatPenalty + ", last n " + lastN);
        }
        this.temperature = temperature;
        this.repeatPenalty = repeatPenalty;
        this.lastN = lastN;
        this.rng = new Random(seed);
    }

    public static Sampler greedy() {
        return new Sampler(0f, 0);
    }

    public int sample(float[] logits) {
        return sample(logits, new int[0], 0);
    }

    /** @param history the tokens so far in history[0..length) (prompt first); only the last lastN count */
    public int sample(float[] logits, int[] history, int length) {
        if (repeatPenalty != 1f && lastN > 0 && length > 0) {
            logits = logits.clone();
            int[] recent = Arrays.copyOfRange(history, Math.max(0, length - lastN), length);
            Arrays.sort(recent);
            for (int i = 0; i < recent.length; i++) {
                int id = recent[i];
                if ((i > 0 && recent[i - 1] == id) || id < 0 || id >= logits.length) continue;
                logits[id] = logits[id] > 0 ? logits[id] / repeatPenalty : logits[id] * repeatPenalty;
            }
        }
        int best = 0;
        for (int i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;
        if (temperature <= 0f) return best;
        double[] p = new double[logits.length];
        double sum = 0;
        for (int i = 0; i < p.length; i++) sum += (p[i] = Math.exp((logits[i] - logits[best]) / temperature));
        double u = rng.nextDouble() * sum;
        for (int i = 0; i < p.length; i++) if ((u -= p[i]) <= 0) return i;
        return best;
    }
}
