package ai.meki.runtime;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;

import org.junit.jupiter.api.Test;

/** The repetition penalty: the same cases as tests/model/test_generate.py (Python) checks. */
class SamplerTest {
    private static int greedy(float penalty, int lastN, float[] logits, int... history) {
        return new Sampler(0f, 0, penalty, lastN).sample(logits, history, history.length);
    }

    @Test
    void penaltyDividesPositiveAndMultipliesNegativeLogits() {
        assertEquals(1, greedy(1.1f, 64, new float[] {2.0f, 1.9f, -3f}, 0));
        assertEquals(1, greedy(1.1f, 64, new float[] {-1.0f, -1.05f}, 0));
        assertEquals(0, greedy(1.0f, 64, new float[] {2.0f, 1.9f}, 0));   // 1: off
    }

    @Test
    void onlyTheLastNCountAndEachTokenOnce() {
        assertEquals(0, greedy(1.1f, 1, new float[] {2.0f, 1.9f}, 0, 1));   // token 0 is out of the window
        assertEquals(0, greedy(1.1f, 64, new float[] {2.0f, 1.6f}, 0, 0, 0));   // penalised once, not thrice
        assertEquals(0, greedy(1.1f, 64, new float[] {2.0f, 1.9f}, 7, -1));   // ids outside the vocabulary ignored
    }

    @Test
    void badSettingsAreRefused() {
        assertThrows(IllegalArgumentException.class, () -> new Sampler(0f, 0, 0f, 64));
        assertThrows(IllegalArgumentException.class, () -> new Sampler(-1f, 0, 1f, 64));
    }
}
