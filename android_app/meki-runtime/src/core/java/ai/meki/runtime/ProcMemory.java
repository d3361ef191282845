package ai.meki.runtime;

import java.io.BufferedReader;
import java.io.FileReader;
import java.io.IOException;

/**
 * This process's memory from /proc/self/status and /proc/self/smaps (Linux and Android): the
 * same fields as mobile_runtime/memory.py. Values are -1 where the kernel does not report them.
 */
public final class ProcMemory {
    private ProcMemory() {}

    /** VmRSS, VmHWM (peak since start), RssAnon, RssFile, in bytes. */
    public static final class Snapshot {
        public final long rssBytes, rssPeakBytes, rssAnonBytes, rssFileBytes;

        Snapshot(long rss, long peak, long anon, long file) {
            rssBytes = rss;
            rssPeakBytes = peak;
            rssAnonBytes = anon;
            rssFileBytes = file;
        }
    }

    /** A byte range of a file that the pack reader maps: the pack file, or the APK holding it. */
    public static final class Region {
        public final String path;
        public final long offset, length;

        public Region(String path, long offset, long length) {
            this.path = path;
            this.offset = offset;
            this.length = length;
        }
    }

    public static Snapshot snapshot() {
        long rss = -1, hwm = -1, anon = -1, file = -1;
        try (BufferedReader r = new BufferedReader(new FileReader("/proc/self/status"))) {
            for (String line; (line = r.readLine()) != null; ) {
                if (line.startsWith("VmRSS:")) rss = kib(line);
                else if (line.startsWith("VmHWM:")) hwm = kib(line);
                else if (line.startsWith("RssAnon:")) anon = kib(line);
                else if (line.startsWith("RssFile:")) file = kib(line);
            }
        } catch (IOException e) {
            return new Snapshot(-1, -1, -1, -1);
        }
        return new Snapshot(rss, hwm, anon, file);
    }

    /**
     * Resident bytes of this process's mappings of region (smaps "Rss" of every mapping of that
     * file whose file range overlaps the region); 0 when nothing is mapped, -1 without smaps.
     * Java has no mincore(); smaps counts the mapped pages this process has in RAM.
     */
    public static long residentBytes(Region region) {
        long total = 0;
        boolean inRegion = false;
        try (BufferedReader r = new BufferedReader(new FileReader("/proc/self/smaps"))) {
            for (String line; (line = r.readLine()) != null; ) {
                String[] f = line.trim().split("\\s+");
                if (f.length >= 5 && f[0].indexOf('-') > 0 && f[0].indexOf(':') < 0) {   // a mapping's header line
                    String path = f.length >= 6 ? String.join(" ", java.util.Arrays.copyOfRange(f, 5, f.length)) : "";
                    inRegion = path.equals(region.path) && overlaps(f[0], f[2], region);
                } else if (inRegion && f[0].equals("Rss:")) {
                    total += Long.parseLong(f[1]) * 1024;
                }
            }
        } catch (IOException | RuntimeException e) {
            return -1;
        }
        return total;
    }

    private static boolean overlaps(String range, String hexOffset, Region region) {
        int dash = range.indexOf('-');
        long size = Long.parseUnsignedLong(range.substring(dash + 1), 16) - Long.parseUnsignedLong(range.substring(0, dash), 16);
        long start = Long.parseUnsignedLong(hexOffset, 16);
        return start < region.offset + region.length && region.offset < start + size;
    }

    private static long kib(String line) {
        String[] f = line.trim().split("\\s+");
        return Long.parseLong(f[1]) * 1024;
    }
}
