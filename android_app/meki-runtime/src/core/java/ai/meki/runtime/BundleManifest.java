package ai.meki.runtime;

import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.LinkOption;
import java.nio.file.Path;
import java.nio.file.attribute.BasicFileAttributes;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.regex.Pattern;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;
import org.json.JSONTokener;

/**
 * A bundle's manifest.json (v1; schema: mobile_runtime/bundle_manifest.schema.json): the only
 * contract between exporter and app. Parsing is strict: an unknown or missing key is an error
 * naming it. org.json is Android's; on the JVM the same API comes from Debian's libandroid-json-java.
 */
public final class BundleManifest {
    public static final String FILE = "manifest.json";
    static final Pattern FINGERPRINT = Pattern.compile("^[0-9a-f]{32}$");
    static final Pattern SHA256 = Pattern.compile("^[0-9a-f]{64}$");
    /** conformance/CHECKS.md limits, shared with the Python, C++ and Swift readers. */
    public static final int MAX_MANIFEST_BYTES = 1 << 20, MAX_JSON_DEPTH = 64;
    static final List<String> MEMORY = Arrays.asList("both", "static", "dynamic", "none");
    static final List<String> DTYPES = Arrays.asList("float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool");

    public final String name, fingerprint, memory;
    public final JSONObject config, export;
    public final TokenizerRef tokenizer;   // null: prompts are token ids
    public final PackRef memoryPack;       // null: dense baseline
    public final List<Backbone> backbones;
    public final List<FileEntry> files;

    /** One input or output tensor of a method. */
    public static final class TensorSpec {
        public final String name, dtype;
        public final long[] shape;

        TensorSpec(JSONObject o, String where) throws BundleException {
            Json j = new Json(o, where, Json.keys("name", "shape", "dtype"));
            name = j.str("name");
            dtype = j.oneOf("dtype", DTYPES);
            JSONArray s = j.array("shape");
            shape = new long[s.length()];
            for (int i = 0; i < shape.length; i++) shape[i] = Json.positiveLong(s, i, where + "/shape");
        }
    }

    /** A program step (prefill or decode). */
    public static final class MethodSpec {
        public final List<TensorSpec> inputs, outputs;
        public final String entry;   // the program's own method name ("" = the step's name)

        MethodSpec(JSONObject o, String where) throws BundleException {
            Json j = new Json(o, where, Json.keys("inputs", "outputs"), "entry");
            inputs = tensors(j.array("inputs"), where + "/inputs");
            outputs = tensors(j.array("outputs"), where + "/outputs");
            entry = j.optStr("entry", "");
        }

        /** The input named name, or null. */
        public TensorSpec input(String name) {
            for (TensorSpec t : inputs) if (t.name.equals(name)) return t;
            return null;
        }

        private static List<TensorSpec> tensors(JSONArray a, String where) throws BundleException {
            List<TensorSpec> out = new ArrayList<>();
            for (int i = 0; i < a.length(); i++) out.add(new TensorSpec(Json.object(a, i, where), where + "/" + i));
            return Collections.unmodifiableList(out);
        }
    }

    /** One exported backbone program. */
    public static final class Backbone {
        public final String target, file, quant, kvCache;
        public final int maxSeqLen, prefillLen;
        public final Map<String, MethodSpec> methods;

        Backbone(JSONObject o, String where) throws BundleException {
            Json j = new Json(o, where, Json.keys("target", "file", "quant", "max_seq_len", "prefill_len", "kv_cache", "methods"), "delegated", "extra");
            target = j.str("target");
            file = j.relpath("file");
            quant = j.str("quant");
            maxSeqLen = j.positiveInt("max_seq_len");
            prefillLen = j.positiveInt("prefill_len");
            kvCache = j.oneOf("kv_cache", Arrays.asList("internal", "io"));
            JSONObject m = j.object("methods");
            Map<String, MethodSpec> ms = new LinkedHashMap<>();
            for (Iterator<String> it = m.keys(); it.hasNext(); ) {
                String k = it.next();
                ms.put(k, new MethodSpec(Json.object(m, k, where + "/methods"), where + "/methods/" + k));
            }
            for (String need : new String[] {"prefill", "decode"}) {
                if (!ms.containsKey(need)) throw new BundleException(where + "/methods: missing '" + need + "'");
            }
            methods = Collections.unmodifiableMap(ms);
        }

        /** Whether the program takes the looked-up memory rows as its extra input. */
        public boolean takesMekiRows() {
            return methods.get("decode").input("meki_rows") != null;
        }
    }

    /** The memory pack the bundle ships. */
    public static final class PackRef {
        public final String file, dtype, layout, fingerprint;
        public final int vocabSize, numLayers, dMem;

        PackRef(JSONObject o, String where) throws BundleException {
            Json j = new Json(o, where, Json.keys("file", "dtype", "layout", "vocab_size", "num_layers", "d_mem", "fingerprint"));
            file = j.relpath("file");
            dtype = j.oneOf("dtype", Arrays.asList("fp16", "bf16", "int8", "int4"));
            layout = j.oneOf("layout", Arrays.asList("token-major", "layer-major"));
            vocabSize = j.positiveInt("vocab_size");
            numLayers = j.positiveInt("num_layers");
            dMem = j.positiveInt("d_mem");
            fingerprint = j.matching("fingerprint", FINGERPRINT);
        }

        /** Refuse a pack whose header disagrees with this entry (every consumer calls it after opening). */
        public void check(PackHeader h) throws BundleException {
            if (!(h.dtype.label.equals(dtype) && h.layout.label.equals(layout) && h.vocabSize == vocabSize
                    && h.numLayers == numLayers && h.dMem == dMem && h.fingerprint.equals(fingerprint))) {
                throw new BundleException("bundle.pack_mismatch", "memory pack " + file + " is " + h + " but the manifest says " + dtype + " "
                        + layout + " V=" + vocabSize + " L=" + numLayers + " m=" + dMem + " fingerprint=" + fingerprint);
            }
        }
    }

    /** The tokenizer file and its special ids. */
    public static final class TokenizerRef {
        public final String file;
        public final int[] eosTokenIds;
        public final Integer bosTokenId;

        TokenizerRef(JSONObject o, String where) throws BundleException {
            Json j = new Json(o, where, Json.keys("file", "eos_token_ids"), "bos_token_id");
            file = j.relpath("file");
            JSONArray a = j.array("eos_token_ids");
            eosTokenIds = new int[a.length()];
            for (int i = 0; i < a.length(); i++) eosTokenIds[i] = (int) Json.nonNegativeLong(a, i, where + "/eos_token_ids");
            bosTokenId = o.isNull("bos_token_id") ? null : j.nonNegativeInt("bos_token_id");
        }
    }

    /** One file of the bundle with its checksum. */
    public static final class FileEntry {
        public final String path, sha256;
        public final long bytes;

        FileEntry(JSONObject o, String where) throws BundleException {
            Json j = new Json(o, where, Json.keys("path", "sha256", "bytes"));
            path = j.relpath("path");
            sha256 = j.matching("sha256", SHA256);
            bytes = j.nonNegativeLong("bytes");
        }
    }

    private BundleManifest(JSONObject o) throws BundleException {
        Json j = new Json(o, "(top)", Json.keys("format", "version", "name", "fingerprint", "memory", "config", "tokenizer",
                "memory_pack", "backbones", "files", "export"));
        if (!"meki-bundle".equals(o.opt("format"))) throw new BundleException("format: must be 'meki-bundle'");
        if (!Integer.valueOf(1).equals(o.opt("version"))) {
            throw new BundleException("version: " + o.opt("version") + " is not supported (this reader reads 1)");
        }
        name = j.str("name");
        fingerprint = j.matching("fingerprint", FINGERPRINT);
        memory = j.oneOf("memory", MEMORY);
        config = j.object("config");
        export = j.object("export");
        tokenizer = o.isNull("tokenizer") ? null : new TokenizerRef(j.object("tokenizer"), "tokenizer");
        memoryPack = o.isNull("memory_pack") ? null : new PackRef(j.object("memory_pack"), "memory_pack");
        List<Backbone> bs = new ArrayList<>();
        JSONArray ba = j.array("backbones");
        for (int i = 0; i < ba.length(); i++) bs.add(new Backbone(Json.object(ba, i, "backbones"), "backbones/" + i));
        List<FileEntry> fs = new ArrayList<>();
        JSONArray fa = j.array("files");
        for (int i = 0; i < fa.length(); i++) fs.add(new FileEntry(Json.object(fa, i, "files"), "files/" + i));
        if (bs.isEmpty() || fs.isEmpty()) throw new BundleException("backbones and files must not be empty");
        backbones = Collections.unmodifiableList(bs);
        files = Collections.unmodifiableList(fs);
    }

    /** Parse and validate manifest text: depth cap (a scan, before the recursive parser), JSON, paths, schema. */
    public static BundleManifest parse(String json) throws BundleException {
        if (jsonDepth(json) > MAX_JSON_DEPTH) {
            throw new BundleException("manifest.too_deep", "manifest JSON nests deeper than " + MAX_JSON_DEPTH + " levels");
        }
        Object top;
        try {
            top = new JSONTokener(json).nextValue();
            if (top instanceof JSONObject) return new BundleManifest((JSONObject) top);
        } catch (JSONException e) {
            throw new BundleException("manifest.json", "manifest is not valid JSON: " + e.getMessage());
        }
        throw new BundleException("manifest.schema", "(top): must be an object");
    }

    /** Parse at most MAX_MANIFEST_BYTES of strict UTF-8 from a stream (a file or an APK asset). */
    public static BundleManifest parse(InputStream in) throws IOException {
        java.io.ByteArrayOutputStream buf = new java.io.ByteArrayOutputStream();
        byte[] chunk = new byte[8192];
        for (int n; (n = in.read(chunk)) > 0; ) {
            buf.write(chunk, 0, n);
            if (buf.size() > MAX_MANIFEST_BYTES) {
                throw new BundleException("manifest.too_large", "manifest is over the " + MAX_MANIFEST_BYTES + "-byte limit");
            }
        }
        try {
            return parse(StandardCharsets.UTF_8.newDecoder().decode(ByteBuffer.wrap(buf.toByteArray())).toString());
        } catch (java.nio.charset.CharacterCodingException e) {
            throw new BundleException("manifest.json", "manifest is not UTF-8: " + e);
        }
    }

    /** Read bundleDir/manifest.json (no file checks; see {@link #verify}). */
    public static BundleManifest load(Path bundleDir) throws IOException {
        Path p = bundleDir.resolve(FILE);
        if (!Files.isRegularFile(p)) {
            throw new BundleException("manifest.missing", bundleDir + ": no " + FILE + " (not a bundle folder)");
        }
        try (InputStream in = Files.newInputStream(p)) {
            return parse(in);
        }
    }

    /** Deepest array/object nesting of JSON text, by a scan that never recurses (strings skipped). */
    static int jsonDepth(String t) {
        int depth = 0, deepest = 0;
        boolean inString = false;
        for (int i = 0; i < t.length(); i++) {
            char c = t.charAt(i);
            if (inString) {
                if (c == '\\') i++;
                else if (c == '"') inString = false;
            } else if (c == '"') {
                inString = true;
            } else if (c == '[' || c == '{') {
                deepest = Math.max(deepest, ++depth);
            } else if (c == ']' || c == '}') {
                depth--;
            }
        }
        return deepest;
    }

    /** Why p is not a clean bundle-relative path (CHECKS.md manifest.path), or null. */
    static String pathProblem(String p) {
        if (p.isEmpty()) return "empty path";
        if (p.startsWith("/")) return "absolute path";
        for (String c : p.split("/", -1)) {
            if (c.isEmpty()) return "empty component (// or a trailing /)";
            if (c.equals(".") || c.equals("..")) return "'" + c + "' component";
            for (int i = 0; i < c.length(); i++) {
                char ch = c.charAt(i);
                boolean ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')
                        || ch == '.' || ch == '_' || ch == '-';
                if (!ok) return "a character outside [A-Za-z0-9._-/]";
            }
        }
        return null;
    }

    /** The backbone for an export target; the error lists the targets the bundle has. */
    public Backbone backbone(String target) throws BundleException {
        StringBuilder have = new StringBuilder();
        for (Backbone b : backbones) {
            if (b.target.equals(target)) return b;
            have.append(have.length() > 0 ? ", " : "").append(b.target);
        }
        throw new BundleException("bundle '" + name + "' has no backbone for target '" + target + "' (has: " + have + ")");
    }

    /**
     * Same checks as mobile_runtime.manifest.verify_bundle: every listed file a regular file with no
     * symlink on its path below the bundle folder, sizes, sha256, references (folder rule), fingerprints.
     * The exception's check names the first problem (conformance/CHECKS.md order).
     */
    public static BundleManifest verify(Path bundleDir, boolean checkHashes) throws IOException {
        BundleManifest m = load(bundleDir);
        List<String[]> problems = new ArrayList<>();   // {check, message}
        for (FileEntry f : m.files) {
            String[] p = fileProblem(bundleDir, f, checkHashes);
            if (p != null) problems.add(p);
        }
        problems.addAll(m.referenceFindings());
        if (!problems.isEmpty()) {
            List<String> msgs = new ArrayList<>();
            for (String[] p : problems) msgs.add(p[1]);
            throw new BundleException(problems.get(0)[0], bundleDir + ": " + String.join("; ", msgs));
        }
        return m;
    }

    /** {check, message} for one listed file, or null: lstat each component, never following a link. */
    private static String[] fileProblem(Path bundleDir, FileEntry f, boolean checkHashes) throws IOException {
        Path cur = bundleDir;
        BasicFileAttributes a = null;
        for (String part : f.path.split("/")) {
            cur = cur.resolve(part);
            try {
                a = Files.readAttributes(cur, BasicFileAttributes.class, LinkOption.NOFOLLOW_LINKS);
            } catch (IOException e) {
                return new String[] {"bundle.missing", f.path + ": missing"};
            }
            if (a.isSymbolicLink()) return new String[] {"bundle.symlink", f.path + ": a symbolic link is on its path (refused)"};
        }
        if (!a.isRegularFile()) return new String[] {"bundle.missing", f.path + ": not a regular file"};
        if (a.size() != f.bytes) return new String[] {"bundle.size", f.path + ": " + a.size() + " bytes, manifest says " + f.bytes};
        if (checkHashes) {
            try (InputStream in = Files.newInputStream(cur, LinkOption.NOFOLLOW_LINKS)) {
                if (!sha256(in).equals(f.sha256)) return new String[] {"bundle.sha256", f.path + ": sha256 does not match the manifest"};
            }
        }
        return null;
    }

    /** Problems that need no file access: unlisted references, fingerprint and memory mismatches. */
    public List<String> referenceProblems() {
        List<String> out = new ArrayList<>();
        for (String[] p : referenceFindings()) out.add(p[1]);
        return out;
    }

    /**
     * {check, message} of each reference problem. The folder rule: a referenced folder (a Core ML
     * .mlpackage) counts as listed when at least one listed file lies under it.
     */
    public List<String[]> referenceFindings() {
        Set<String> listed = new HashSet<>();
        for (FileEntry f : files) listed.add(f.path);
        List<String> refs = new ArrayList<>();
        for (Backbone b : backbones) refs.add(b.file);
        if (tokenizer != null) refs.add(tokenizer.file);
        if (memoryPack != null) refs.add(memoryPack.file);
        List<String[]> problems = new ArrayList<>();
        for (String r : refs) {
            boolean under = false;
            for (String f : listed) under = under || f.startsWith(r + "/");
            if (!listed.contains(r) && !under) problems.add(new String[] {"bundle.unlisted", r + ": referenced but not listed in files"});
        }
        if (memoryPack != null && !memoryPack.fingerprint.equals(fingerprint)) {
            problems.add(new String[] {"bundle.fingerprint", "memory pack fingerprint " + memoryPack.fingerprint + " != model " + fingerprint});
        }
        if (memory.equals("none") != (memoryPack == null)) {
            problems.add(new String[] {"bundle.memory", "memory=" + memory + " but memory_pack is " + (memoryPack == null ? "absent" : "present")});
        }
        return problems;
    }

    /** The listed entry for a bundle-relative path, or null. */
    public FileEntry file(String path) {
        for (FileEntry f : files) if (f.path.equals(path)) return f;
        return null;
    }

    static String sha256(Path p) throws IOException {
        try (InputStream in = Files.newInputStream(p)) {
            return sha256(in);
        }
    }

    /** Hex sha256 of a stream (an APK asset or a file). */
    public static String sha256(InputStream in) throws IOException {
        MessageDigest md;
        try {
            md = MessageDigest.getInstance("SHA-256");
        } catch (NoSuchAlgorithmException e) {
            throw new IllegalStateException(e);
        }
        byte[] buf = new byte[1 << 16];
        for (int n; (n = in.read(buf)) > 0; ) md.update(buf, 0, n);
        StringBuilder s = new StringBuilder(64);
        for (byte b : md.digest()) s.append(String.format("%02x", b & 0xFF));
        return s.toString();
    }
}
