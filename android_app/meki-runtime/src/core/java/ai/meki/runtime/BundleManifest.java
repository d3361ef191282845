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
import java.util.HashMap;
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
 * A bundle's manifest.json (v1; schema: contract/bundle_manifest.schema.json): the only
 * contract between exporter and app. Parsing is strict: an unknown or missing key is an error
 * naming it. Values are read with org.json's own getters (Android's org.json; on the JVM the same
 * code comes from Debian's libandroid-json-java); their errors are prefixed with the JSON path.
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
            checkKeys(o, where, new String[] {"name", "shape", "dtype"});
            try {
                name = str(o, "name");
                dtype = oneOf(str(o, "dtype"), DTYPES, where + "/dtype");
                JSONArray s = o.getJSONArray("shape");
                shape = new long[s.length()];
                for (int i = 0; i < shape.length; i++) shape[i] = atLeast(1, integerAt(s, i, Long.MAX_VALUE), where + "/shape/" + i);
            } catch (JSONException e) {
                throw bad(where, e);
            }
        }
    }

    /** A program step (prefill or decode). */
    public static final class MethodSpec {
        public final List<TensorSpec> inputs, outputs;
        public final String entry;   // the program's own method name ("" = the step's name)

        MethodSpec(JSONObject o, String where) throws BundleException {
            checkKeys(o, where, new String[] {"inputs", "outputs"}, "entry");
            try {
                inputs = tensors(o.getJSONArray("inputs"), where + "/inputs");
                outputs = tensors(o.getJSONArray("outputs"), where + "/outputs");
                entry = o.has("entry") ? str(o, "entry") : "";
            } catch (JSONException e) {
                throw bad(where, e);
            }
        }

        /** The input named name, or null. */
        public TensorSpec input(String name) {
            for (TensorSpec t : inputs) if (t.name.equals(name)) return t;
            return null;
        }

        private static List<TensorSpec> tensors(JSONArray a, String where) throws JSONException, BundleException {
            List<TensorSpec> out = new ArrayList<>();
            for (int i = 0; i < a.length(); i++) out.add(new TensorSpec(a.getJSONObject(i), where + "/" + i));
            return Collections.unmodifiableList(out);
        }
    }

    /** One exported backbone program. */
    public static final class Backbone {
        public final String target, file, quant, kvCache;
        public final String soc;         // extra.soc: the SoC an NPU program was compiled for, or null
        public final JSONObject extra;   // free-form exporter facts (empty when absent)
        public final int maxSeqLen, prefillLen;
        public final Map<String, MethodSpec> methods;

        Backbone(JSONObject o, String where) throws BundleException {
            checkKeys(o, where, new String[] {"target", "file", "quant", "max_seq_len", "prefill_len", "kv_cache", "methods"},
                    "delegated", "extra");
            Map<String, MethodSpec> ms = new LinkedHashMap<>();
            try {
                target = str(o, "target");
                file = relpath(str(o, "file"), where + "/file");
                quant = str(o, "quant");
                maxSeqLen = (int) atLeast(1, integer(o, "max_seq_len", Integer.MAX_VALUE), where + "/max_seq_len");
                prefillLen = (int) atLeast(1, integer(o, "prefill_len", Integer.MAX_VALUE), where + "/prefill_len");
                kvCache = oneOf(str(o, "kv_cache"), Arrays.asList("internal", "io"), where + "/kv_cache");
                extra = o.has("extra") ? o.getJSONObject("extra") : new JSONObject();
                if (o.has("delegated")) {  // backend -> delegated op/partition count
                    JSONObject d = o.getJSONObject("delegated");
                    for (Iterator<String> it = d.keys(); it.hasNext(); ) {
                        String k = it.next();
                        if (!(d.get(k) instanceof Integer || d.get(k) instanceof Long)) {
                            throw new BundleException(where + "/delegated/" + k + ": must be an integer");
                        }
                    }
                }
                // extra is free-form in the schema (every reader accepts any value there): a soc that is
                // not a string is no SoC, not a manifest error
                soc = extra.opt("soc") instanceof String ? (String) extra.opt("soc") : null;
                JSONObject m = o.getJSONObject("methods");
                for (Iterator<String> it = m.keys(); it.hasNext(); ) {
                    String k = it.next();
                    ms.put(k, new MethodSpec(m.getJSONObject(k), where + "/methods/" + k));
                }
            } catch (JSONException e) {
                throw bad(where, e);
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
            checkKeys(o, where, new String[] {"file", "dtype", "layout", "vocab_size", "num_layers", "d_mem", "fingerprint"});
            try {
                file = relpath(str(o, "file"), where + "/file");
                dtype = oneOf(str(o, "dtype"), Arrays.asList("fp16", "bf16", "int8", "int4"), where + "/dtype");
                layout = oneOf(str(o, "layout"), Arrays.asList("token-major", "layer-major"), where + "/layout");
                vocabSize = (int) atLeast(1, integer(o, "vocab_size", Integer.MAX_VALUE), where + "/vocab_size");
                numLayers = (int) atLeast(1, integer(o, "num_layers", Integer.MAX_VALUE), where + "/num_layers");
                dMem = (int) atLeast(1, integer(o, "d_mem", Integer.MAX_VALUE), where + "/d_mem");
                fingerprint = matching(str(o, "fingerprint"), FINGERPRINT, where + "/fingerprint");
            } catch (JSONException e) {
                throw bad(where, e);
            }
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
            checkKeys(o, where, new String[] {"file", "eos_token_ids"}, "bos_token_id");
            try {
                file = relpath(str(o, "file"), where + "/file");
                JSONArray a = o.getJSONArray("eos_token_ids");
                eosTokenIds = new int[a.length()];
                for (int i = 0; i < a.length(); i++) eosTokenIds[i] = (int) atLeast(0, integerAt(a, i, Integer.MAX_VALUE), where + "/eos_token_ids/" + i);
                bosTokenId = o.isNull("bos_token_id") ? null : (int) atLeast(0, integer(o, "bos_token_id", Integer.MAX_VALUE), where + "/bos_token_id");
            } catch (JSONException e) {
                throw bad(where, e);
            }
        }
    }

    /** One file of the bundle with its checksum. */
    public static final class FileEntry {
        public final String path, sha256;
        public final long bytes;

        FileEntry(JSONObject o, String where) throws BundleException {
            checkKeys(o, where, new String[] {"path", "sha256", "bytes"});
            try {
                path = relpath(str(o, "path"), where + "/path");
                sha256 = matching(str(o, "sha256"), SHA256, where + "/sha256");
                bytes = atLeast(0, integer(o, "bytes", Long.MAX_VALUE), where + "/bytes");
            } catch (JSONException e) {
                throw bad(where, e);
            }
        }
    }

    private BundleManifest(JSONObject o) throws JSONException, BundleException {
        checkKeys(o, "(top)", new String[] {"format", "version", "name", "fingerprint", "memory", "config", "tokenizer",
                "memory_pack", "backbones", "files", "export"});
        if (!"meki-bundle".equals(o.opt("format"))) throw new BundleException("format: must be 'meki-bundle'");
        if (!Integer.valueOf(1).equals(o.opt("version"))) {
            throw new BundleException("version: " + o.opt("version") + " is not supported (this reader reads 1)");
        }
        name = str(o, "name");
        fingerprint = matching(str(o, "fingerprint"), FINGERPRINT, "fingerprint");
        memory = oneOf(str(o, "memory"), MEMORY, "memory");
        config = o.getJSONObject("config");
        export = o.getJSONObject("export");
        tokenizer = o.isNull("tokenizer") ? null : new TokenizerRef(o.getJSONObject("tokenizer"), "tokenizer");
        memoryPack = o.isNull("memory_pack") ? null : new PackRef(o.getJSONObject("memory_pack"), "memory_pack");
        List<Backbone> bs = new ArrayList<>();
        JSONArray ba = o.getJSONArray("backbones");
        for (int i = 0; i < ba.length(); i++) bs.add(new Backbone(ba.getJSONObject(i), "backbones/" + i));
        List<FileEntry> fs = new ArrayList<>();
        JSONArray fa = o.getJSONArray("files");
        Map<String, Integer> seen = new HashMap<>();  // a file listed twice would be hashed twice (N times)
        for (int i = 0; i < fa.length(); i++) {
            FileEntry f = new FileEntry(fa.getJSONObject(i), "files/" + i);
            Integer first = seen.putIfAbsent(f.path, i);
            if (first != null) {
                throw new BundleException("manifest.path",
                        "files/" + i + "/path: '" + f.path + "' is listed twice (files/" + first + "/path too)");
            }
            fs.add(f);
        }
        if (bs.isEmpty() || fs.isEmpty()) throw new BundleException("backbones and files must not be empty");
        backbones = Collections.unmodifiableList(bs);
        files = Collections.unmodifiableList(fs);
    }

    /** Parse and validate manifest text: depth cap (a scan, before the recursive parser), JSON, paths, schema. */
    public static BundleManifest parse(String json) throws BundleException {
        if (jsonDepth(json) > MAX_JSON_DEPTH) {
            throw new BundleException("manifest.too_deep", "manifest JSON nests deeper than " + MAX_JSON_DEPTH + " levels");
        }
        if (json.startsWith("\uFEFF")) {  // RFC 8259: no byte-order mark; the other readers refuse it too
            throw new BundleException("manifest.json", "manifest starts with a byte-order mark (not plain JSON)");
        }
        Object top;
        try {
            JSONTokener tokens = new JSONTokener(json);
            top = tokens.nextValue();
            if (tokens.nextClean() != 0) {  // JSONTokener stops after the first value: the rest must be blank
                throw new JSONException("text after the top-level value");
            }
        } catch (JSONException e) {
            throw new BundleException("manifest.json", "manifest is not valid JSON: " + e.getMessage());
        }
        if (!(top instanceof JSONObject)) throw new BundleException("manifest.schema", "(top): must be an object");
        try {
            return new BundleManifest((JSONObject) top);
        } catch (JSONException e) {   // a value of the wrong type outside the per-entry checks
            throw new BundleException("manifest.schema", "manifest: " + e.getMessage());
        }
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
        // a symlink is no manifest: it could point anywhere, and its text would reach error messages
        if (!Files.isRegularFile(p, LinkOption.NOFOLLOW_LINKS)) {
            throw new BundleException("manifest.missing", bundleDir + ": no " + FILE + " (not a bundle folder)");
        }
        try (InputStream in = Files.newInputStream(p, LinkOption.NOFOLLOW_LINKS)) {
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
     * Same checks as contract.manifest.verify_bundle: every listed file a regular file with no
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

    /** The strict part org.json has no call for: every required key present, no key outside required + optional. */
    static void checkKeys(JSONObject o, String where, String[] required, String... optional) throws BundleException {
        for (String k : required) if (!o.has(k)) throw new BundleException(where + ": missing key '" + k + "'");
        Set<String> allowed = new HashSet<>(Arrays.asList(required));
        allowed.addAll(Arrays.asList(optional));
        for (Iterator<String> it = o.keys(); it.hasNext(); ) {
            String k = it.next();
            if (!allowed.contains(k)) throw new BundleException(where + ": unknown key '" + k + "'");
        }
    }

    static String oneOf(String v, List<String> values, String where) throws BundleException {
        if (!values.contains(v)) throw new BundleException(where + ": must be one of " + values + " (got '" + v + "')");
        return v;
    }

    /** A clean bundle-relative path (CHECKS.md manifest.path): no '..', '.', empty or absolute parts. */
    static String relpath(String v, String where) throws BundleException {
        String why = pathProblem(v);
        if (why != null) {
            throw new BundleException("manifest.path", where + ": '" + v + "' is not a clean relative path (" + why + ")");
        }
        return v;
    }

    static String matching(String v, Pattern p, String where) throws BundleException {
        if (!p.matcher(v).matches()) throw new BundleException(where + ": must match " + p.pattern() + " (got '" + v + "')");
        return v;
    }

    static long atLeast(long min, long v, String where) throws BundleException {
        if (v < min) throw new BundleException(where + ": must be >= " + min + " (got " + v + ")");
        return v;
    }

    /** A string value, strictly (org.json's getString would turn a number into its text). */
    static String str(JSONObject o, String k) throws JSONException {
        Object v = o.get(k);
        if (!(v instanceof String)) throw new JSONException("Value " + v + " at " + k + " is not a string");
        return (String) v;
    }

    /** An integer value, strictly (no strings, no fractions: org.json's getInt would coerce them). */
    static long integer(JSONObject o, String k, long max) throws JSONException {
        return integral(o.get(k), k, max);
    }

    static long integerAt(JSONArray a, int i, long max) throws JSONException {
        return integral(a.get(i), String.valueOf(i), max);
    }

    private static long integral(Object v, String k, long max) throws JSONException {
        if (!(v instanceof Integer || v instanceof Long) || ((Number) v).longValue() > max) {
            throw new JSONException("Value " + v + " at " + k + " is not an integer in range");
        }
        return ((Number) v).longValue();
    }

    static BundleException bad(String where, JSONException e) {
        return new BundleException(where + ": " + e.getMessage());
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
