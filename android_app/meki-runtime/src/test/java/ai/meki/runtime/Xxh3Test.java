package ai.meki.runtime;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import org.junit.jupiter.api.Test;

/** XXH3-64 against vectors from the Python xxhash package (conformance/make_xxh3_vectors.py). */
class Xxh3Test {
    static byte[] lcgBytes(int n) {
        byte[] out = new byte[n];
        long x = 0;
        for (int i = 0; i < n; i++) {
            x = x * 6364136223846793005L + 1442695040888963407L;
            out[i] = (byte) (x >>> 56);
        }
        return out;
    }

    @Test
    void matchesPythonXxhashForEveryLengthClass() throws IOException {
        String text = new String(java.nio.file.Files.readAllBytes(Golden.conformance().resolve("xxh3_vectors.txt")),
                StandardCharsets.US_ASCII);   // the shared corpus: conformance/xxh3_vectors.txt
        byte[] data = lcgBytes(1 << 20);
        int checked = 0;
        for (String line : text.split("\n")) {
            if (line.isEmpty() || line.startsWith("#")) continue;
            String[] f = line.split(" ");
            int n = Integer.parseInt(f[0]);
            long want = Long.parseUnsignedLong(f[1], 16);
            assertEquals(want, Xxh3.hash(ByteBuffer.wrap(data), 0, n), "length " + n);
            checked++;
        }
        assertEquals(2107, checked);
    }

    @Test
    void hashesAtAnOffsetWithoutMovingTheBuffer() {
        byte[] data = lcgBytes(5000);
        byte[] tail = java.util.Arrays.copyOfRange(data, 777, 5000);
        ByteBuffer buf = ByteBuffer.wrap(data);
        buf.position(3);
        assertEquals(Xxh3.hash(tail), Xxh3.hash(buf, 777, 5000 - 777));
        assertEquals(3, buf.position());
    }

    @Test
    void unsignedMultiplyHighMatchesBigInteger() {
        long[] xs = {0, 1, -1, Long.MIN_VALUE, Long.MAX_VALUE, 0x9E3779B185EBCA87L, 0xFFFFFFFFL};
        for (long a : xs) {
            for (long b : xs) {
                java.math.BigInteger p = new java.math.BigInteger(Long.toUnsignedString(a))
                        .multiply(new java.math.BigInteger(Long.toUnsignedString(b)));
                assertEquals(p.shiftRight(64).longValue(), Xxh3.unsignedMultiplyHigh(a, b), a + "*" + b);
            }
        }
    }
}
