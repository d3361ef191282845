package ai.meki.runtime;

import java.nio.ByteBuffer;

/** Dequantisation of encoded rows to float32, exactly as PACK_FORMAT.md section 3 writes it. */
public final class RowCodec {
    private RowCodec() {}

    /**
     * Decode one row.
     *
     * @param raw little-endian buffer holding the row at absolute index {@code off}
     * @param out receives {@code h.dMem} floats from {@code outOff}
     */
    public static void decodeRow(ByteBuffer raw, int off, PackHeader h, float[] out, int outOff) {
        int m = h.dMem;
        switch (h.dtype) {
            case FP16:
                for (int i = 0; i < m; i++) out[outOff + i] = halfToFloat(raw.getShort(off + 2 * i));
                break;
            case BF16:
                for (int i = 0; i < m; i++) out[outOff + i] = Float.intBitsToFloat((raw.getShort(off + 2 * i) & 0xFFFF) << 16);
                break;
            case INT8: {
                float scale = raw.getFloat(off);
                for (int i = 0; i < m; i++) out[outOff + i] = (float) raw.get(off + 4 + i) * scale;
                break;
            }
            default:
                decodeInt4(raw, off, h, out, outOff);
        }
    }

    /** int4: m/g fp32 group scales, then m/2 bytes; low nibble = even value, high = odd, each q + 8. */
    private static void decodeInt4(ByteBuffer raw, int off, PackHeader h, float[] out, int outOff) {
        int m = h.dMem, g = h.groupSize, values = off + 4 * (m / g);
        for (int j = 0; j < m / 2; j++) {
            int b = raw.get(values + j) & 0xFF;
            int i = 2 * j;
            out[outOff + i] = (float) ((b & 0x0F) - 8) * raw.getFloat(off + 4 * (i / g));
            out[outOff + i + 1] = (float) ((b >>> 4) - 8) * raw.getFloat(off + 4 * ((i + 1) / g));
        }
    }

    /** IEEE 754 binary16 bits -> float32 (exact; Float.float16ToFloat needs Java 20). */
    public static float halfToFloat(short bits) {
        int h = bits & 0xFFFF, sign = (h & 0x8000) << 16, exp = (h >>> 10) & 0x1F, mant = h & 0x3FF;
        if (exp == 0x1F) return Float.intBitsToFloat(sign | 0x7F800000 | (mant << 13));   // inf / NaN
        if (exp != 0) return Float.intBitsToFloat(sign | ((exp + 112) << 23) | (mant << 13));
        if (mant == 0) return Float.intBitsToFloat(sign);                                   // +-0
        float v = mant * 0x1p-24f;                                                          // subnormal, exact
        return sign != 0 ? -v : v;
    }
}
