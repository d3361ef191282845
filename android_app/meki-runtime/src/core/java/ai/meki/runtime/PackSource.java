package ai.meki.runtime;

import java.io.IOException;
import java.nio.Buffer;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;

/**
 * Where a pack's bytes come from: a region [base, base + length) of an open file (a whole
 * .mekipack, or an uncompressed asset inside an APK). MAP maps the data section in 1 GiB
 * segments (a MappedByteBuffer holds at most 2 GiB); PREAD reads with positional reads.
 */
abstract class PackSource {
    final FileChannel channel;
    final long base, length;

    PackSource(FileChannel channel, long base, long length) {
        this.channel = channel;
        this.base = base;
        this.length = length;
    }

    /** {@code len} bytes at pack offset {@code off} as a little-endian buffer indexed from 0. */
    abstract ByteBuffer read(long off, int len) throws IOException;

    /** Bytes of the pack mapped into memory (0 for PREAD). */
    abstract long mappedBytes();

    final ByteBuffer pread(long off, int len) throws IOException {
        ByteBuffer dst = ByteBuffer.allocate(len).order(ByteOrder.LITTLE_ENDIAN);
        while (dst.hasRemaining()) {
            int n = channel.read(dst, base + off + dst.position());
            if (n < 0) throw new PackException.Truncated("short read at offset " + off + ": the file shrank");
        }
        ((Buffer) dst).flip();
        return dst;
    }

    static final class Pread extends PackSource {
        Pread(FileChannel channel, long base, long length) { super(channel, base, length); }

        @Override ByteBuffer read(long off, int len) throws IOException { return pread(off, len); }

        @Override long mappedBytes() { return 0; }
    }

    static final class Mapped extends PackSource {
        /** Segment size: a multiple of every legal block size, so no checksum block straddles two. */
        static final long SEGMENT = 1L << 30;
        private final long dataOffset;
        private final MappedByteBuffer[] segments;

        Mapped(FileChannel channel, long base, long length, long dataOffset, long dataEnd) throws IOException {
            super(channel, base, length);
            this.dataOffset = dataOffset;
            int n = (int) ((dataEnd - dataOffset + SEGMENT - 1) / SEGMENT);
            segments = new MappedByteBuffer[n];
            for (int i = 0; i < n; i++) {
                long start = dataOffset + i * SEGMENT, size = Math.min(SEGMENT, dataEnd - start);
                segments[i] = channel.map(FileChannel.MapMode.READ_ONLY, base + start, size);
            }
        }

        /**
         * Issue 12, class 2: a mapped file truncated by someone else faults on the next touch past its
         * new end (SIGBUS; HotSpot turns it into an InternalError, ART may not). The size is checked
         * before every touch of the mapping; the copy is made here, so a fault cannot escape later
         * from a returned view. A truncation between the check and the copy is caught as InternalError
         * where the VM delivers one.
         */
        @Override
        ByteBuffer read(long off, int len) throws IOException {
            long rel = off - dataOffset;
            int seg = rel < 0 ? -1 : (int) (rel / SEGMENT);
            if (seg < 0 || seg >= segments.length) return pread(off, len);   // header or checksum table
            long now = channel.size();
            if (now < base + length) {
                throw new PackException.Truncated("the pack shrank to " + (now - base) + " bytes while open (header says "
                        + length + "): refusing to read the mapping");
            }
            try {
                return copy(readView(seg, rel, len));
            } catch (InternalError e) {
                throw new PackException.Truncated("the mapped pack faulted at offset " + off + " (it shrank while open)");
            }
        }

        private static ByteBuffer copy(ByteBuffer v) {
            ByteBuffer out = ByteBuffer.allocate(v.remaining()).order(ByteOrder.LITTLE_ENDIAN);
            out.put(v);
            ((Buffer) out).flip();
            return out;
        }

        private ByteBuffer readView(int seg, long rel, int len) {
            int at = (int) (rel - seg * SEGMENT);
            if (at + (long) len <= segments[seg].capacity()) return view(segments[seg], at, len);
            ByteBuffer out = ByteBuffer.allocate(len).order(ByteOrder.LITTLE_ENDIAN);   // straddles two segments
            int first = segments[seg].capacity() - at;
            out.put(view(segments[seg], at, first)).put(view(segments[seg + 1], 0, len - first));
            ((Buffer) out).flip();
            return out;
        }

        private static ByteBuffer view(MappedByteBuffer seg, int at, int len) {
            ByteBuffer d = seg.duplicate();
            ((Buffer) d).limit(at + len);
            ((Buffer) d).position(at);
            return d.slice().order(ByteOrder.LITTLE_ENDIAN);
        }

        @Override
        long mappedBytes() {
            long n = 0;
            for (MappedByteBuffer s : segments) n += s.capacity();
            return n;
        }
    }
}
