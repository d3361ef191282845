package ai.meki.runtime;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;

/** The decoded, checked 128-byte header of a v1 memory pack (PACK_FORMAT.md section 2). */
public final class PackHeader {
    public static final int HEADER_SIZE = 128, VERSION = 1, CHECKSUM_OFFSET = 120;
    public static final long DATA_ALIGN = 16 * 1024;
    static final byte[] MAGIC = {'M', 'E', 'K', 'I', 'P', 'A', 'C', 'K'};

    /** Row encodings (header byte 28). */
    public enum Dtype {
        FP16(1, "fp16"), BF16(2, "bf16"), INT8(3, "int8"), INT4(4, "int4");
        public final int code;
        public final String label;   // the name manifest.json and the Python reader use

        Dtype(int code, String label) { this.code = code; this.label = label; }

        static Dtype of(int code) {
            for (Dtype d : values()) if (d.code == code) return d;
            return null;
        }
    }

    /** Data layouts (header byte 29). */
    public enum Layout {
        TOKEN_MAJOR(0, "token-major"), LAYER_MAJOR(1, "layer-major");
        public final int code;
        public final String label;

        Layout(int code, String label) { this.code = code; this.label = label; }

        static Layout of(int code) {
            for (Layout l : values()) if (l.code == code) return l;
            return null;
        }
    }

    /** A token's record is read whole into a Java array; a larger one is refused (as in C++). */
    static final long MAX_RECORD_BYTES = 1L << 30;

    public final int vocabSize, numLayers, dMem, groupSize, rowBytes, blockSize, numBlocks;
    public final Dtype dtype;
    public final Layout layout;
    public final long recordStride, dataOffset, dataSize, tableOffset, fileSize, tableChecksum;
    public final String fingerprint;   // 32 lowercase hex characters

    private PackHeader(ByteBuffer b, Dtype dtype, Layout layout) {
        this.vocabSize = b.getInt(16);
        this.numLayers = b.getInt(20);
        this.dMem = b.getInt(24);
        this.dtype = dtype;
        this.layout = layout;
        this.groupSize = b.getInt(32);
        this.recordStride = b.getInt(36) & 0xFFFFFFFFL;
        this.dataOffset = b.getLong(40);
        this.dataSize = b.getLong(48);
        this.blockSize = b.getInt(56);
        this.numBlocks = b.getInt(60);   // u32: compared as unsigned, so >= 2^31 never passes as negative
        this.tableOffset = b.getLong(64);
        this.fileSize = b.getLong(72);
        this.fingerprint = hex(b, 80, 16);
        this.tableChecksum = b.getLong(96);
        long rb = rowBytes(dtype, dMem, groupSize);
        this.rowBytes = rb <= Integer.MAX_VALUE ? (int) rb : -1;   // -1: refused by checkDerived
    }

    /** Exact bytes of one encoded row (long: int4 with g=2 and d_mem near 2^31 exceeds 32 bits). */
    static long rowBytes(Dtype dtype, int dMem, int groupSize) {
        long m = dMem & 0xFFFFFFFFL, g = groupSize & 0xFFFFFFFFL;
        switch (dtype) {
            case FP16: case BF16: return 2 * m;
            case INT8: return 4 + m;
            default: return g > 0 ? 4 * (m / g) + m / 2 : m / 2;
        }
    }

    /** One token's record: its L rows (layer order). */
    public int tokenBytes() {
        return numLayers * rowBytes;
    }

    /**
     * Checks 1-6 and 9 of PACK_FORMAT.md section 5 on the first 128 bytes.
     *
     * @param raw the header bytes (at least 128, or fewer if the file is shorter)
     * @param actualSize the pack's real size in bytes
     * @param expectedFingerprint 32 hex chars, or null to accept any model
     */
    public static PackHeader parse(byte[] raw, long actualSize, String expectedFingerprint) throws PackException {
        if (actualSize < HEADER_SIZE || raw.length < HEADER_SIZE) {
            throw new PackException.Truncated("pack.too_short", "file is " + actualSize + " bytes, too small for a 128-byte "
                    + "pack header (truncated or not a pack)");
        }
        ByteBuffer b = ByteBuffer.wrap(raw, 0, HEADER_SIZE).order(ByteOrder.LITTLE_ENDIAN);
        for (int i = 0; i < MAGIC.length; i++) {
            if (raw[i] != MAGIC[i]) throw new PackException.Format("pack.magic", "bad magic: not a MeKi memory pack");
        }
        long version = b.getInt(8) & 0xFFFFFFFFL;
        if (version != VERSION) {
            throw new PackException.Format("pack.version", "unsupported pack version " + version + " (this reader reads version 1)");
        }
        if (Xxh3.hash(b, 0, CHECKSUM_OFFSET) != b.getLong(CHECKSUM_OFFSET)) {
            throw new PackException.Checksum("pack.header_checksum", "header checksum mismatch: the header is damaged");
        }
        Dtype dtype = Dtype.of(raw[28] & 0xFF);
        Layout layout = Layout.of(raw[29] & 0xFF);
        if (dtype == null || layout == null) {
            throw new PackException.Format("unknown dtype code " + (raw[28] & 0xFF) + " or layout code " + (raw[29] & 0xFF));
        }
        PackHeader h = new PackHeader(b, dtype, layout);
        h.checkDerived(b);
        if (actualSize != h.fileSize) {
            throw new PackException.Truncated("file is " + actualSize + " bytes but its header says " + h.fileSize
                    + (actualSize < h.fileSize ? " (truncated)" : " (extra bytes)"));
        }
        if (expectedFingerprint != null && !expectedFingerprint.equals(h.fingerprint)) {
            throw new PackException.Fingerprint("pack fingerprint " + h.fingerprint + " does not match the model's "
                    + expectedFingerprint + ": it was folded from another model");
        }
        return h;
    }

    /**
     * Check 5: shapes, reserved fields and every derived size against the spec's formulas, computed
     * exactly (Math.*Exact): a product that would wrap is a mismatch, never a pass.
     */
    private void checkDerived(ByteBuffer b) throws PackException {
        String bad = shapeProblem();
        if (bad != null) throw new PackException.Format("invalid header: " + bad);
        boolean reservedZero = b.getShort(30) == 0 && b.getLong(104) == 0 && b.getLong(112) == 0;
        int wantGroup = dtype == Dtype.INT8 ? dMem : dtype == Dtype.INT4 ? groupSize : 0;
        long rb = rowBytes(dtype, dMem, groupSize), records, wantStride, wantDataSize, wantBlocks, wantFileSize;
        try {
            records = Math.multiplyExact(Math.multiplyExact((long) vocabSize, (long) numLayers), rb);
            if (records > (1L << 62)) throw new ArithmeticException();
            wantStride = layout == Layout.TOKEN_MAJOR ? Math.multiplyExact((long) numLayers, rb) : rb;
            wantDataSize = (records + blockSize - 1) / blockSize * blockSize;
            wantBlocks = wantDataSize / blockSize;
            wantFileSize = Math.addExact(DATA_ALIGN + wantDataSize, 8 * wantBlocks);
        } catch (ArithmeticException e) {
            throw new PackException.Format("invalid header: pack too large (more than 2^62 data bytes)");
        }
        boolean ok = reservedZero && b.getInt(12) == HEADER_SIZE && groupSize == wantGroup
                && recordStride == wantStride && dataOffset == DATA_ALIGN && dataSize == wantDataSize
                && Integer.toUnsignedLong(numBlocks) == wantBlocks && tableOffset == DATA_ALIGN + wantDataSize
                && fileSize == wantFileSize;
        if (!ok) throw new PackException.Format("inconsistent header fields (reserved, sizes or offsets)");
        if ((long) numLayers * rb > MAX_RECORD_BYTES || numBlocks < 0) {
            throw new PackException.Format("a token record of " + numLayers + " x " + rb
                    + " bytes (or 2^31+ blocks) is over this reader's limits");
        }
    }

    private String shapeProblem() {
        if (vocabSize < 1 || numLayers < 1 || dMem < 1) return "vocab_size, num_layers and d_mem must be in [1, 2^31)";
        if (dMem % 8 != 0) return "d_mem must be a multiple of 8, got " + dMem;
        if (dtype == Dtype.INT4 && (groupSize < 2 || groupSize % 2 != 0 || dMem % groupSize != 0)) {
            return "int4 group_size must be even and divide d_mem=" + dMem + ", got " + groupSize;
        }
        if (blockSize < 4096 || blockSize > (16 << 20) || Integer.bitCount(blockSize) != 1) {
            return "block_size must be a power of two in [4096, 16 MiB], got " + blockSize;
        }
        return null;
    }

    static String hex(ByteBuffer b, int off, int n) {
        StringBuilder s = new StringBuilder(2 * n);
        for (int i = 0; i < n; i++) s.append(String.format("%02x", b.get(off + i) & 0xFF));
        return s.toString();
    }

    @Override
    public String toString() {
        return "PackHeader(V=" + vocabSize + ", L=" + numLayers + ", m=" + dMem + ", " + dtype.label + ", "
                + layout.label + ", block=" + blockSize + ", fingerprint=" + fingerprint + ")";
    }
}
