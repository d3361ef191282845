package ai.meki.runtime;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.Map;

/** A byte-bounded LRU cache of raw token records (token id -> heap copy of its bytes). */
public final class RecordCache {
    /** Bytes a cached record costs beyond its payload (map entry, array header). */
    static final int ENTRY_OVERHEAD = 64;

    /** A snapshot of the cache's use. */
    public static final class Info {
        public final int entries;
        public final long bytes, limit;

        Info(int entries, long bytes, long limit) { this.entries = entries; this.bytes = bytes; this.limit = limit; }
    }

    private final long limit;
    private final LinkedHashMap<Integer, byte[]> map = new LinkedHashMap<>(16, 0.75f, true);
    private long used;

    RecordCache(long limitBytes) {
        this.limit = Math.max(0, limitBytes);
    }

    /** The cached record as a little-endian buffer, or null. */
    synchronized ByteBuffer get(int tok) {
        byte[] rec = limit > 0 ? map.get(tok) : null;
        return rec == null ? null : ByteBuffer.wrap(rec).order(ByteOrder.LITTLE_ENDIAN);
    }

    /** Cache a copy of rec (indexed from 0); returns a buffer over the copy, or rec if disabled. */
    synchronized ByteBuffer put(int tok, ByteBuffer rec) {
        if (limit == 0) return rec;   // disabled: hand back the (possibly mapped) buffer, no copy
        byte[] copy = new byte[rec.remaining()];
        rec.duplicate().get(copy);
        long cost = copy.length + ENTRY_OVERHEAD;
        if (cost <= limit && !map.containsKey(tok)) {
            map.put(tok, copy);
            used += cost;
            Iterator<Map.Entry<Integer, byte[]>> it = map.entrySet().iterator();
            while (used > limit && it.hasNext()) {
                used -= it.next().getValue().length + ENTRY_OVERHEAD;
                it.remove();
            }
        }
        return ByteBuffer.wrap(copy).order(ByteOrder.LITTLE_ENDIAN);
    }

    synchronized void clear() {
        map.clear();
        used = 0;
    }

    synchronized Info info() {
        return new Info(map.size(), used, limit);
    }
}
