package ai.meki.runtime;

import java.io.Closeable;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.channels.FileChannel;
import java.nio.file.Path;
import java.nio.file.StandardOpenOption;
import java.util.BitSet;

/**
 * An open MeKi memory pack (format v1, PACK_FORMAT.md): checked header and checksum table,
 * lookups of dequantised rows, every data block verified the first time a read touches it.
 *
 * <pre>
 * try (MemoryPack pack = MemoryPack.open(path, new MemoryPack.Options().expectFingerprint(fp))) {
 *     float[] rows = pack.lookup(new int[] {17, 42});   // [2, L, m] row-major
 * }
 * </pre>
 * Thread-safe for lookups.
 */
public final class MemoryPack implements Closeable {
    /** How the data section is read. */
    public enum Mode { MAP, PREAD }

    /** Settings of {@link #open}. */
    public static final class Options {
        public Mode mode = Mode.MAP;              // MAP: FileChannel.map; PREAD: positional reads
        public long cacheBytes = 8L << 20;        // LRU cache of raw token records; 0 disables it
        public String expectedFingerprint;        // 32 hex chars, or null to accept any model
        public boolean verifyOnRead = true;       // check each data block's xxh3 on first touch
        public boolean closeChannel = true;       // close the channel with the pack

        public Options mode(Mode m) { mode = m; return this; }
        public Options cacheBytes(long n) { cacheBytes = n; return this; }
        public Options expectFingerprint(String fp) { expectedFingerprint = fp; return this; }
        public Options verifyOnRead(boolean v) { verifyOnRead = v; return this; }
    }

    public final PackHeader header;
    private final PackSource source;
    private final boolean closeChannel;
    private final boolean verifyOnRead;
    private final long[] sums;            // one xxh3_64 per data block
    private final BitSet verified;        // blocks already checked
    private final RecordCache cache;
    private volatile boolean closed;

    private MemoryPack(PackHeader header, PackSource source, long[] sums, Options opts) {
        this.header = header;
        this.source = source;
        this.sums = sums;
        this.verified = new BitSet(header.numBlocks);
        this.cache = new RecordCache(opts.cacheBytes);
        this.verifyOnRead = opts.verifyOnRead;
        this.closeChannel = opts.closeChannel;
    }

    /** Open a .mekipack file. */
    public static MemoryPack open(Path path, Options opts) throws IOException {
        if (!java.nio.file.Files.isRegularFile(path)) {
            throw new PackException("cannot open pack " + path + ": missing or not a regular file");
        }
        FileChannel ch;
        try {
            ch = FileChannel.open(path, StandardOpenOption.READ);
        } catch (IOException e) {
            throw new PackException("cannot open pack " + path + ": " + e.getMessage());
        }
        try {
            Options o = copy(opts);
            o.closeChannel = true;
            return open(ch, 0, ch.size(), o);
        } catch (IOException | RuntimeException e) {
            ch.close();
            throw e;
        }
    }

    /**
     * Open the pack stored at [offset, offset + length) of an open file: an uncompressed APK asset
     * (AssetFileDescriptor start offset and length) or a whole file (0, size).
     */
    public static MemoryPack open(FileChannel ch, long offset, long length, Options opts) throws IOException {
        PackSource probe = new PackSource.Pread(ch, offset, length);
        byte[] raw = new byte[(int) Math.min(PackHeader.HEADER_SIZE, Math.max(0, length))];
        probe.pread(0, raw.length).get(raw);
        PackHeader h = PackHeader.parse(raw, length, opts.expectedFingerprint);
        checkPadding(probe, h);
        ByteBuffer table = probe.pread(h.tableOffset, 8 * h.numBlocks);
        if (Xxh3.hash(table, 0, table.limit()) != h.tableChecksum) {
            throw new PackException.Checksum("pack.table_checksum", "checksum table does not match its checksum in the header");
        }
        long[] sums = new long[h.numBlocks];
        for (int i = 0; i < sums.length; i++) sums[i] = table.getLong(8 * i);
        PackSource src = opts.mode == Mode.MAP
                ? new PackSource.Mapped(ch, offset, length, h.dataOffset, h.tableOffset) : probe;
        return new MemoryPack(h, src, sums, opts);
    }

    private static Options copy(Options o) {
        Options c = new Options().mode(o.mode).cacheBytes(o.cacheBytes).expectFingerprint(o.expectedFingerprint)
                .verifyOnRead(o.verifyOnRead);
        c.closeChannel = o.closeChannel;
        return c;
    }

    /** Check 7: bytes [128, data_offset) are zero. */
    private static void checkPadding(PackSource src, PackHeader h) throws IOException {
        ByteBuffer pad = src.pread(PackHeader.HEADER_SIZE, (int) (h.dataOffset - PackHeader.HEADER_SIZE));
        while (pad.hasRemaining()) {
            if (pad.get() != 0) throw new PackException.Checksum("pack.padding", "header padding is not zero: the header region is damaged");
        }
    }

    public int vocabSize() { return header.vocabSize; }

    public int numLayers() { return header.numLayers; }

    public int dMem() { return header.dMem; }

    /** Floats per token: L * m. */
    public int floatsPerToken() { return header.numLayers * header.dMem; }

    /** tokens: [T] -> dequantised rows [T, L, m] (row-major float32). */
    public float[] lookup(int[] tokens) throws PackException {
        float[] out = new float[tokens.length * floatsPerToken()];
        lookupInto(tokens, out, 0);
        return out;
    }

    /** Fill out[outOff, outOff + T*L*m) with the rows of tokens ([T, L, m] row-major). */
    public void lookupInto(int[] tokens, float[] out, int outOff) throws PackException {
        for (int t : tokens) {
            if (t < 0 || t >= header.vocabSize) {
                throw new PackException.Token("token id " + t + " out of range [0, " + header.vocabSize + ")");
            }
        }
        if (out.length - outOff < tokens.length * floatsPerToken()) {
            throw new IllegalArgumentException("out holds " + (out.length - outOff) + " floats, need "
                    + tokens.length * floatsPerToken());
        }
        for (int i = 0; i < tokens.length; i++) {
            ByteBuffer rec = record(tokens[i]);
            for (int l = 0; l < header.numLayers; l++) {
                int dst = outOff + (i * header.numLayers + l) * header.dMem;
                RowCodec.decodeRow(rec, l * header.rowBytes, header, out, dst);
            }
        }
    }

    /** Token tok's raw record [L * row_bytes] (layer order), via the LRU cache. */
    private ByteBuffer record(int tok) throws PackException {
        ByteBuffer hit = cache.get(tok);
        if (hit != null) return hit;
        PackHeader h = header;
        ByteBuffer rec;
        try {
            if (h.layout == PackHeader.Layout.TOKEN_MAJOR) {
                rec = read(h.dataOffset + (long) tok * h.recordStride, h.tokenBytes());
            } else {
                rec = ByteBuffer.allocate(h.tokenBytes()).order(java.nio.ByteOrder.LITTLE_ENDIAN);
                for (int l = 0; l < h.numLayers; l++) {
                    rec.put(read(h.dataOffset + ((long) l * h.vocabSize + tok) * h.rowBytes, h.rowBytes));
                }
                ((java.nio.Buffer) rec).flip();
            }
        } catch (PackException e) {
            throw e;
        } catch (IOException e) {
            throw new PackException("cannot read token " + tok + ": " + e.getMessage());
        }
        return cache.put(tok, rec);
    }

    /** len bytes at pack offset off, after checking every block they touch (check 10). */
    private ByteBuffer read(long off, int len) throws IOException {
        if (closed) throw new PackException("pack is closed");
        PackHeader h = header;
        int b0 = (int) ((off - h.dataOffset) / h.blockSize), b1 = (int) ((off + len - 1 - h.dataOffset) / h.blockSize);
        if (verifyOnRead) {
            for (int b = b0; b <= b1; b++) checkBlock(b);
        }
        return source.read(off, len);
    }

    private void checkBlock(int b) throws IOException {
        synchronized (verified) {
            if (verified.get(b)) return;
        }
        ByteBuffer block = source.read(header.dataOffset + (long) b * header.blockSize, header.blockSize);
        if (Xxh3.hash(block, 0, header.blockSize) != sums[b]) {
            long start = header.dataOffset + (long) b * header.blockSize;
            throw new PackException.Checksum("pack.block_checksum", "data block " + b + " (bytes " + start + ".." + (start + header.blockSize)
                    + ") does not match its checksum: the pack is damaged");
        }
        synchronized (verified) {
            verified.set(b);
        }
    }

    /** Check every data block (a full verify); throws naming the first bad block. */
    public void verify() throws IOException {
        for (int b = 0; b < header.numBlocks; b++) checkBlock(b);
    }

    /** Bytes of the pack mapped into the address space (MAP) or 0 (PREAD). */
    public long mappedBytes() { return source.mappedBytes(); }

    /** Entries and bytes in the LRU cache. */
    public RecordCache.Info cacheInfo() { return cache.info(); }

    @Override
    public void close() throws IOException {
        closed = true;
        cache.clear();
        if (closeChannel) source.channel.close();
    }

    @Override
    public String toString() {
        return "MemoryPack(" + header + ", " + (source instanceof PackSource.Mapped ? "map" : "pread") + ")";
    }
}
