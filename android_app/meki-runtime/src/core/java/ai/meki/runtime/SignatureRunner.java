package ai.meki.runtime;

import java.io.Closeable;
import java.io.IOException;
import java.util.Map;

/**
 * A program with named signatures and named tensors (a LiteRT .tflite): what {@link IoCacheProgram}
 * drives. Two KV cache contracts (IoCacheProgram decides which from the manifest):
 * <ul>
 * <li>whole cache (target tflite): the cache tensors are decode inputs that are also outputs of the
 *     same name ({@link IoCacheProgram#wholeCacheTensors}); they never cross this interface: the
 *     runner keeps them, each call reading what the previous one wrote (a runner can swap two
 *     buffers instead of copying the cache through Java arrays every step);</li>
 * <li>split cache (target tflite-qnn, extra.kv_new_tensors): the cache kv_k_i/kv_v_i is an ordinary
 *     input, fed by the caller every call, and the runner returns the chunk's new rows
 *     k_new_i/v_new_i with the logits ({@link SplitCache}); the runner keeps no state.</li>
 * </ul>
 */
public interface SignatureRunner extends Closeable {
    /**
     * Run one signature.
     * @param inputs by tensor name: int[] (int32), long[] (int64), float[] (float32) or short[]
     *        (int16: a quantised graph's tensor, already encoded per extra.io_quant)
     * @return the outputs the caller reads, by name: "logits", and k_new_i/v_new_i under the split
     *         contract; float[], or short[] for an int16 output (decoded by the caller)
     */
    Map<String, Object> run(String signature, Map<String, Object> inputs) throws IOException;

    /** Zero the cache a whole-cache runner keeps: the next call starts a new sequence (no-op when split). */
    void resetCache() throws IOException;
}
