package ai.meki.runtime;

import java.io.Closeable;
import java.io.IOException;

/** One exported backbone: a step runs a method (prefill or decode) and returns the last logits. */
public interface StepProgram extends Closeable {
    /**
     * @param method "prefill" or "decode" (the manifest's step name; the adapter maps it to the entry)
     * @param tokens [1, T] token ids
     * @param inputPos [T] cache positions
     * @param rows [1, T, L, m] looked-up memory rows, or null for a dense backbone
     * @return logits [V] of the last position
     */
    float[] step(String method, long[] tokens, long[] inputPos, float[] rows) throws IOException;
}
