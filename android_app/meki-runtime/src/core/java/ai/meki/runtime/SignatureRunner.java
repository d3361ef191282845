package ai.meki.runtime;

import java.io.Closeable;
import java.io.IOException;
import java.util.Map;

/** A program with named signatures and named tensors (a LiteRT .tflite): what {@link IoCacheProgram} drives. */
public interface SignatureRunner extends Closeable {
    /**
     * Run one signature.
     * @param inputs by tensor name: int[] (int32), long[] (int64) or float[] (float32), row-major
     * @return every output by tensor name, float[] for float32 tensors
     */
    Map<String, Object> run(String signature, Map<String, Object> inputs) throws IOException;
}
