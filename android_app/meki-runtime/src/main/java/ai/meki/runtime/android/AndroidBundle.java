package ai.meki.runtime.android;

import ai.meki.runtime.BundleException;
import ai.meki.runtime.BundleManifest;
import ai.meki.runtime.MemoryPack;
import ai.meki.runtime.ProcMemory;
import android.content.Context;
import android.content.res.AssetFileDescriptor;
import android.content.res.AssetManager;
import android.os.Build;
import android.system.ErrnoException;
import android.system.Os;
import java.io.Closeable;
import java.io.File;
import java.io.FileInputStream;
import java.io.FileNotFoundException;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.InputStream;
import java.io.OutputStream;
import java.nio.channels.FileChannel;
import java.nio.file.Path;

/**
 * A MeKi bundle on the device: a folder (files dir, adb-pushed storage, or an asset pack's
 * extracted path), or the APK's assets under {@code meki/} (base or install-time asset pack).
 * From assets the memory pack is mapped in place through AssetFileDescriptor's offset: it must be
 * stored uncompressed (noCompress), which {@code meki bundle --android} configures.
 */
public final class AndroidBundle implements Closeable {
    public static final String ASSET_ROOT = "meki";
    public final BundleManifest manifest;
    private final Context context;
    private final File dir;                 // null when the bundle is in the APK's assets
    private AssetFileDescriptor packFd;     // kept open while the pack is mapped

    private AndroidBundle(Context context, File dir, BundleManifest manifest) {
        this.context = context;
        this.dir = dir;
        this.manifest = manifest;
    }

    /** A bundle folder; manifest and every file's size and sha256 are verified. */
    public static AndroidBundle fromDirectory(Context context, File dir) throws IOException {
        return new AndroidBundle(context, dir, BundleManifest.verify(dir.toPath(), true));
    }

    /** The bundle in assets/meki/ (sizes checked; sha256 is left to the pack's own block checksums). */
    public static AndroidBundle fromAssets(Context context) throws IOException {
        AssetManager am = context.getAssets();
        BundleManifest m;
        try (InputStream in = am.open(ASSET_ROOT + "/" + BundleManifest.FILE)) {
            m = BundleManifest.parse(in);
        }
        for (String[] p : m.referenceFindings()) throw new BundleException(p[0], "assets/" + ASSET_ROOT + ": " + p[1]);
        return new AndroidBundle(context, null, m);
    }

    /** Open the memory pack, mapped in place (from a file or from the uncompressed APK asset). */
    public MemoryPack openPack(MemoryPack.Options opts) throws IOException {
        BundleManifest.PackRef ref = manifest.memoryPack;
        if (ref == null) throw new BundleException("bundle '" + manifest.name + "' is dense: it has no memory pack");
        opts.expectFingerprint(manifest.fingerprint);
        MemoryPack pack;
        if (dir != null) {
            pack = MemoryPack.open(new File(dir, ref.file).toPath(), opts);
        } else {
            try {
                packFd = context.getAssets().openFd(ASSET_ROOT + "/" + ref.file);
            } catch (FileNotFoundException e) {
                throw new BundleException("assets/" + ASSET_ROOT + "/" + ref.file + " cannot be opened as a file "
                        + "descriptor: it is compressed in the APK (add its extension to androidResources.noCompress)");
            }
            FileChannel ch = new FileInputStream(packFd.getFileDescriptor()).getChannel();
            opts.closeChannel = false;   // the AssetFileDescriptor owns the fd
            pack = MemoryPack.open(ch, packFd.getStartOffset(), packFd.getLength(), opts);
        }
        ref.check(pack.header);
        return pack;
    }

    /**
     * The file range the open pack is mapped from (the pack file, or the APK around the stored
     * asset), for its resident bytes in the stats; null before {@link #openPack}.
     */
    public ProcMemory.Region packRegion() throws IOException {
        if (manifest.memoryPack == null) return null;
        if (dir != null) {
            File f = new File(dir, manifest.memoryPack.file);
            return new ProcMemory.Region(f.getCanonicalPath(), 0, f.length());
        }
        if (packFd == null) return null;
        try {
            String apk = Os.readlink("/proc/self/fd/" + packFd.getParcelFileDescriptor().getFd());
            return new ProcMemory.Region(apk, packFd.getStartOffset(), packFd.getLength());
        } catch (ErrnoException e) {
            throw new IOException("cannot resolve the pack's file descriptor: " + e.getMessage(), e);
        }
    }

    /**
     * A filesystem path to a bundle file (ExecuTorch and Core ML load programs by path): the file
     * itself for a folder bundle; for assets, a copy in noBackupFilesDir, made once and re-made if
     * its size differs from the manifest.
     */
    public Path filePath(String relPath) throws IOException {
        if (dir != null) return new File(dir, relPath).toPath();
        BundleManifest.FileEntry e = manifest.file(relPath);
        if (e == null) throw new BundleException(relPath + ": not listed in the manifest");
        File out = new File(new File(context.getNoBackupFilesDir(), "meki-" + manifest.fingerprint), relPath);
        if (out.length() != e.bytes) {
            File tmp = new File(out.getPath() + ".partial");
            if (!tmp.getParentFile().isDirectory() && !tmp.getParentFile().mkdirs()) throw new IOException("mkdir " + tmp);
            try (InputStream in = context.getAssets().open(ASSET_ROOT + "/" + relPath);
                 OutputStream os = new FileOutputStream(tmp)) {
                byte[] buf = new byte[1 << 16];
                for (int n; (n = in.read(buf)) > 0; ) os.write(buf, 0, n);
            }
            String sha;
            try (InputStream in = new FileInputStream(tmp)) {
                sha = BundleManifest.sha256(in);
            }
            if (!sha.equals(e.sha256) || !tmp.renameTo(out)) {
                tmp.delete();
                throw new BundleException(relPath + ": copied asset does not match the manifest's sha256");
            }
        }
        return out.toPath();
    }

    /**
     * This phone's SoC model (Build.SOC_MODEL, e.g. "SM8750"), or null before Android 12. Read
     * reflectively: the field is API 31 and the app's minSdk is 26.
     */
    public static String socModel() {
        if (Build.VERSION.SDK_INT < 31) return null;
        try {
            Object v = Build.class.getField("SOC_MODEL").get(null);
            return v instanceof String && !((String) v).isEmpty() && !"unknown".equals(v) ? (String) v : null;
        } catch (ReflectiveOperationException e) {
            return null;
        }
    }

    @Override
    public void close() throws IOException {
        if (packFd != null) packFd.close();
        packFd = null;
    }
}
