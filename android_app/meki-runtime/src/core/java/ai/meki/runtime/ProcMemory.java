package ai.meki.runtime;

import java.io.BufferedReader;
import java.io.FileReader;
import java.io.IOException;

/** Resident memory of this process from /proc/self/status (Linux and Android); -1 elsewhere. */
public final class ProcMemory {
    private ProcMemory() {}

    /** {rss_bytes, rss_peak_bytes} (VmRSS, VmHWM). */
    public static long[] rss() {
        long rss = -1, hwm = -1;
        try (BufferedReader r = new BufferedReader(new FileReader("/proc/self/status"))) {
            for (String line; (line = r.readLine()) != null; ) {
                if (line.startsWith("VmRSS:")) rss = kib(line);
                else if (line.startsWith("VmHWM:")) hwm = kib(line);
            }
        } catch (IOException e) {
            return new long[] {-1, -1};
        }
        return new long[] {rss, hwm};
    }

    private static long kib(String line) {
        String[] f = line.trim().split("\\s+");
        return Long.parseLong(f[1]) * 1024;
    }
}
