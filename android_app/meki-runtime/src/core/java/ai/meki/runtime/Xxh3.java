package ai.meki.runtime;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/**
 * XXH3 64-bit (xxHash >= 0.8, {@code XXH3_64bits}: seed 0, default secret): the only hash of the
 * memory-pack format. Written from the public algorithm description; checked against the
 * Python {@code xxhash} package by {@code Xxh3Test} (every length 0..2100 and several large ones).
 *
 * <p>All arithmetic is on unsigned 64-bit values held in Java longs (wrap-around is the spec's
 * mod 2^64 arithmetic); right shifts are logical ({@code >>>}).
 */
public final class Xxh3 {
    private static final long P32_1 = 0x9E3779B1L, P32_2 = 0x85EBCA77L, P32_3 = 0xC2B2AE3DL;
    private static final long P64_1 = 0x9E3779B185EBCA87L, P64_2 = 0xC2B2AE3D27D4EB4FL;
    private static final long P64_3 = 0x165667B19E3779F9L, P64_4 = 0x85EBCA77C2B2AE63L;
    private static final long P64_5 = 0x27D4EB2F165667C5L;
    private static final long PRIME_MX1 = 0x165667919E3779F9L, PRIME_MX2 = 0x9FB21C651E98DF25L;
    private static final int STRIPE_LEN = 64, SECRET_SIZE = 192, CONSUME_RATE = 8;
    private static final int STRIPES_PER_BLOCK = (SECRET_SIZE - STRIPE_LEN) / CONSUME_RATE;  // 16
    private static final int BLOCK_LEN = STRIPE_LEN * STRIPES_PER_BLOCK;                     // 1024

    /** The default 192-byte secret ({@code XXH3_kSecret}). */
    private static final ByteBuffer SECRET = ByteBuffer.wrap(new byte[] {
        (byte) 0xb8, (byte) 0xfe, 0x6c, 0x39, 0x23, (byte) 0xa4, 0x4b, (byte) 0xbe,
        0x7c, 0x01, (byte) 0x81, 0x2c, (byte) 0xf7, 0x21, (byte) 0xad, 0x1c,
        (byte) 0xde, (byte) 0xd4, 0x6d, (byte) 0xe9, (byte) 0x83, (byte) 0x90, (byte) 0x97, (byte) 0xdb,
        0x72, 0x40, (byte) 0xa4, (byte) 0xa4, (byte) 0xb7, (byte) 0xb3, 0x67, 0x1f,
        (byte) 0xcb, 0x79, (byte) 0xe6, 0x4e, (byte) 0xcc, (byte) 0xc0, (byte) 0xe5, 0x78,
        (byte) 0x82, 0x5a, (byte) 0xd0, 0x7d, (byte) 0xcc, (byte) 0xff, 0x72, 0x21,
        (byte) 0xb8, 0x08, 0x46, 0x74, (byte) 0xf7, 0x43, 0x24, (byte) 0x8e,
        (byte) 0xe0, 0x35, (byte) 0x90, (byte) 0xe6, (byte) 0x81, 0x3a, 0x26, 0x4c,
        0x3c, 0x28, 0x52, (byte) 0xbb, (byte) 0x91, (byte) 0xc3, 0x00, (byte) 0xcb,
        (byte) 0x88, (byte) 0xd0, 0x65, (byte) 0x8b, 0x1b, 0x53, 0x2e, (byte) 0xa3,
        0x71, 0x64, 0x48, (byte) 0x97, (byte) 0xa2, 0x0d, (byte) 0xf9, 0x4e,
        0x38, 0x19, (byte) 0xef, 0x46, (byte) 0xa9, (byte) 0xde, (byte) 0xac, (byte) 0xd8,
        (byte) 0xa8, (byte) 0xfa, 0x76, 0x3f, (byte) 0xe3, (byte) 0x9c, 0x34, 0x3f,
        (byte) 0xf9, (byte) 0xdc, (byte) 0xbb, (byte) 0xc7, (byte) 0xc7, 0x0b, 0x4f, 0x1d,
        (byte) 0x8a, 0x51, (byte) 0xe0, 0x4b, (byte) 0xcd, (byte) 0xb4, 0x59, 0x31,
        (byte) 0xc8, (byte) 0x9f, 0x7e, (byte) 0xc9, (byte) 0xd9, 0x78, 0x73, 0x64,
        (byte) 0xea, (byte) 0xc5, (byte) 0xac, (byte) 0x83, 0x34, (byte) 0xd3, (byte) 0xeb, (byte) 0xc3,
        (byte) 0xc5, (byte) 0x81, (byte) 0xa0, (byte) 0xff, (byte) 0xfa, 0x13, 0x63, (byte) 0xeb,
        0x17, 0x0d, (byte) 0xdd, 0x51, (byte) 0xb7, (byte) 0xf0, (byte) 0xda, 0x49,
        (byte) 0xd3, 0x16, 0x55, 0x26, 0x29, (byte) 0xd4, 0x68, (byte) 0x9e,
        0x2b, 0x16, (byte) 0xbe, 0x58, 0x7d, 0x47, (byte) 0xa1, (byte) 0xfc,
        (byte) 0x8f, (byte) 0xf8, (byte) 0xb8, (byte) 0xd1, 0x7a, (byte) 0xd0, 0x31, (byte) 0xce,
        0x45, (byte) 0xcb, 0x3a, (byte) 0x8f, (byte) 0x95, 0x16, 0x04, 0x28,
        (byte) 0xaf, (byte) 0xd7, (byte) 0xfb, (byte) 0xca, (byte) 0xbb, 0x4b, 0x40, 0x7e,
    }).order(ByteOrder.LITTLE_ENDIAN);

    private Xxh3() {}

    /** xxh3_64 of all of {@code data}. */
    public static long hash(byte[] data) {
        return hash(ByteBuffer.wrap(data), 0, data.length);
    }

    /** xxh3_64 of {@code len} bytes of {@code buf} from absolute index {@code off}; buf's
     * position, limit and byte order are left untouched. */
    public static long hash(ByteBuffer buf, int off, int len) {
        ByteBuffer in = buf.duplicate().order(ByteOrder.LITTLE_ENDIAN);
        if (len <= 16) return len0to16(in, off, len);
        if (len <= 128) return len17to128(in, off, len);
        if (len <= 240) return len129to240(in, off, len);
        return hashLong(in, off, len);
    }

    private static long sec64(int i) { return SECRET.getLong(i); }

    private static long sec32(int i) { return SECRET.getInt(i) & 0xFFFFFFFFL; }

    private static long xorshift(long v, int s) { return v ^ (v >>> s); }

    private static long xxh64Avalanche(long h) {
        h = xorshift(h, 33) * P64_2;
        h = xorshift(h, 29) * P64_3;
        return xorshift(h, 32);
    }

    private static long avalanche(long h) {
        h = xorshift(h, 37) * PRIME_MX1;
        return xorshift(h, 32);
    }

    private static long rrmxmx(long h, int len) {
        h ^= Long.rotateLeft(h, 49) ^ Long.rotateLeft(h, 24);
        h *= PRIME_MX2;
        h ^= (h >>> 35) + len;
        h *= PRIME_MX2;
        return xorshift(h, 28);
    }

    /** Low 64 bits XOR high 64 bits of the unsigned 128-bit product a * b. */
    static long mulFold64(long a, long b) {
        return a * b ^ unsignedMultiplyHigh(a, b);
    }

    /** High 64 bits of the unsigned product (Math.multiplyHigh needs Android API 31). */
    static long unsignedMultiplyHigh(long a, long b) {
        long aLo = a & 0xFFFFFFFFL, aHi = a >>> 32, bLo = b & 0xFFFFFFFFL, bHi = b >>> 32;
        long lolo = aLo * bLo, hilo = aHi * bLo, lohi = aLo * bHi, hihi = aHi * bHi;
        long cross = (lolo >>> 32) + (hilo & 0xFFFFFFFFL) + lohi;   // < 2^64, no overflow
        return (hilo >>> 32) + (cross >>> 32) + hihi;
    }

    private static long len0to16(ByteBuffer in, int off, int len) {
        if (len > 8) {
            long lo = in.getLong(off) ^ (sec64(24) ^ sec64(32));
            long hi = in.getLong(off + len - 8) ^ (sec64(40) ^ sec64(48));
            long acc = len + Long.reverseBytes(lo) + hi + mulFold64(lo, hi);
            return avalanche(acc);
        }
        if (len >= 4) {
            long in1 = in.getInt(off) & 0xFFFFFFFFL, in2 = in.getInt(off + len - 4) & 0xFFFFFFFFL;
            long keyed = (in2 + (in1 << 32)) ^ (sec64(8) ^ sec64(16));
            return rrmxmx(keyed, len);
        }
        if (len > 0) {
            int c1 = in.get(off) & 0xFF, c2 = in.get(off + (len >> 1)) & 0xFF;
            int c3 = in.get(off + len - 1) & 0xFF;
            long combined = ((long) c1 << 16 | (long) c2 << 24 | c3 | (long) len << 8) & 0xFFFFFFFFL;
            return xxh64Avalanche(combined ^ (sec32(0) ^ sec32(4)));
        }
        return xxh64Avalanche(sec64(56) ^ sec64(64));
    }

    private static long mix16(ByteBuffer in, int off, int secOff) {
        return mulFold64(in.getLong(off) ^ sec64(secOff), in.getLong(off + 8) ^ sec64(secOff + 8));
    }

    private static long len17to128(ByteBuffer in, int off, int len) {
        long acc = len * P64_1;
        if (len > 32) {
            if (len > 64) {
                if (len > 96) {
                    acc += mix16(in, off + 48, 96) + mix16(in, off + len - 64, 112);
                }
                acc += mix16(in, off + 32, 64) + mix16(in, off + len - 48, 80);
            }
            acc += mix16(in, off + 16, 32) + mix16(in, off + len - 32, 48);
        }
        acc += mix16(in, off, 0) + mix16(in, off + len - 16, 16);
        return avalanche(acc);
    }

    private static long len129to240(ByteBuffer in, int off, int len) {
        long acc = len * P64_1;
        int rounds = len / 16;
        for (int i = 0; i < 8; i++) acc += mix16(in, off + 16 * i, 16 * i);
        acc = avalanche(acc);
        for (int i = 8; i < rounds; i++) acc += mix16(in, off + 16 * i, 16 * (i - 8) + 3);
        acc += mix16(in, off + len - 16, 136 - 17);
        return avalanche(acc);
    }

    private static long hashLong(ByteBuffer in, int off, int len) {
        long[] acc = {P32_3, P64_1, P64_2, P64_3, P64_4, P32_2, P64_5, P32_1};
        int blocks = (len - 1) / BLOCK_LEN;
        for (int n = 0; n < blocks; n++) {
            accumulate(acc, in, off + n * BLOCK_LEN, STRIPES_PER_BLOCK);
            scramble(acc, SECRET_SIZE - STRIPE_LEN);
        }
        int stripes = ((len - 1) - BLOCK_LEN * blocks) / STRIPE_LEN;
        accumulate(acc, in, off + blocks * BLOCK_LEN, stripes);
        accumulate512(acc, in, off + len - STRIPE_LEN, SECRET_SIZE - STRIPE_LEN - 7);
        long result = len * P64_1;
        for (int i = 0; i < 4; i++) {
            result += mulFold64(acc[2 * i] ^ sec64(11 + 16 * i), acc[2 * i + 1] ^ sec64(11 + 16 * i + 8));
        }
        return avalanche(result);
    }

    private static void accumulate(long[] acc, ByteBuffer in, int off, int stripes) {
        for (int n = 0; n < stripes; n++) accumulate512(acc, in, off + n * STRIPE_LEN, n * CONSUME_RATE);
    }

    private static void accumulate512(long[] acc, ByteBuffer in, int off, int secOff) {
        for (int i = 0; i < 8; i++) {
            long v = in.getLong(off + 8 * i);
            long k = v ^ sec64(secOff + 8 * i);
            acc[i ^ 1] += v;
            acc[i] += (k & 0xFFFFFFFFL) * (k >>> 32);
        }
    }

    private static void scramble(long[] acc, int secOff) {
        for (int i = 0; i < 8; i++) {
            long a = xorshift(acc[i], 47) ^ sec64(secOff + 8 * i);
            acc[i] = a * P32_1;
        }
    }
}
