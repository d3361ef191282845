package ai.meki.runtime;

import java.io.Closeable;
import java.io.IOException;
import java.util.Map;

/**
 * A program with named signatures and named tensors (a LiteRT .tflite) that keeps its KV cache:
 * what {@link IoCacheProgram} drives. The cache tensors (decode inputs that are also outputs of
 * the same name, {@link IoCacheProgram#cacheTensors}) never cross this interface: each call reads
 * the cache the previous call wrote, so a runner can swap two buffers instead of copying the cache
 * in and out of Java arrays every step (hundreds of MB per step at Qwen3-0.6B sizes).
 */
public interface SignatureRunner extends Closeable {
    /**
     * Run one signature.
     * @param inputs the non-cache inputs by tensor name: int[] (int32), long[] (int64) or float[] (float32)
     * @return the "logits" output
     */
    float[] run(String signature, Map<String, Object> inputs) throws IOException;

    /** Zero the cache: the next call starts a new sequence. */
    void resetCache() throws IOException;
}
