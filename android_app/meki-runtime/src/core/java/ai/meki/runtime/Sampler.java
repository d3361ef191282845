package ai.meki.runtime;

import java.util.Random;

/** Picks the next token from logits [V]: greedy at temperature 0, else softmax sampling. */
public final class Sampler {
    private final float temperature;
    private final Random rng;

    public Sampler(float temperature, long seed) {
        this.temperature = temperature;
        this.rng = new Random(seed);
    }

    public static Sampler greedy() {
        return new Sampler(0f, 0);
    }

    public int sample(float[] logits) {
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
