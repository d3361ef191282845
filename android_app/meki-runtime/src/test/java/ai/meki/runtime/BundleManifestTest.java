package ai.meki.runtime;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.function.Consumer;
import org.json.JSONObject;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The Java manifest reader on a manifest written by the Python writer, and its refusals. */
class BundleManifestTest {
    @TempDir Path tmp;

    @Test
    void readsAndVerifiesThePythonWrittenBundle() throws Exception {
        BundleManifest m = BundleManifest.verify(TestBundle.dir(), true);
        assertEquals("golden-test", m.name);
        assertEquals("both", m.memory);
        assertEquals(3, m.memoryPack.numLayers);
        assertEquals(99, m.tokenizer.eosTokenIds[0]);
        assertNull(m.tokenizer.bosTokenId);
        BundleManifest.Backbone b = m.backbone("executorch-xnnpack");
        assertTrue(b.takesMekiRows());
        assertEquals(4, b.prefillLen);
        assertEquals("decode", b.methods.get("decode").entry);
        assertEquals(4, b.methods.get("prefill").input("meki_rows").shape.length);
        BundleException e = assertThrows(BundleException.class, () -> m.backbone("coreml"));
        assertTrue(e.getMessage().contains("has: executorch-xnnpack"), e.getMessage());
        try (MemoryPack p = MemoryPack.open(TestBundle.dir().resolve(m.memoryPack.file),
                new MemoryPack.Options().expectFingerprint(m.fingerprint))) {
            m.memoryPack.check(p.header);
        }
    }

    Path copyBundle() throws Exception {
        Path dst = tmp.resolve("b");
        Files.createDirectories(dst);
        try (java.util.stream.Stream<Path> s = Files.list(TestBundle.dir())) {
            for (Path p : (Iterable<Path>) s::iterator) Files.copy(p, dst.resolve(p.getFileName()));
        }
        return dst;
    }

    @Test
    void damagedOrMissingFilesAreNamed() throws Exception {
        Path b = copyBundle();
        Files.write(b.resolve("model.pte"), "stand-in progran".getBytes(StandardCharsets.UTF_8));   // same size
        Files.delete(b.resolve("tokenizer.json"));
        BundleException e = assertThrows(BundleException.class, () -> BundleManifest.verify(b, true));
        assertTrue(e.getMessage().contains("model.pte: sha256 does not match"), e.getMessage());
        assertTrue(e.getMessage().contains("tokenizer.json: missing"), e.getMessage());
        BundleManifest.verify(copyBundleFresh(), false);
    }

    Path copyBundleFresh() throws Exception {
        tmp = Files.createTempDirectory(tmp, "again");
        return copyBundle();
    }

    void refusedWith(Consumer<JSONObject> edit, String msg) throws Exception {
        JSONObject o = new JSONObject(new String(Files.readAllBytes(TestBundle.dir().resolve("manifest.json")),
                StandardCharsets.UTF_8));
        edit.accept(o);
        BundleException e = assertThrows(BundleException.class, () -> BundleManifest.parse(o.toString()));
        assertTrue(e.getMessage().contains(msg), e.getMessage());
    }

    @Test
    void schemaRefusalsNameTheKey() throws Exception {
        refusedWith(o -> put(o, "surprise", 1), "unknown key 'surprise'");
        refusedWith(o -> put(o, "version", 2), "version: 2 is not supported");
        refusedWith(o -> o.remove("files"), "missing key 'files'");
        refusedWith(o -> put(o.optJSONArray("files").optJSONObject(0), "path", "../../etc/passwd"), "files/0/path");
        refusedWith(o -> put(o.optJSONObject("memory_pack"), "fingerprint", "xyz"), "memory_pack/fingerprint");
        refusedWith(o -> put(o.optJSONObject("memory_pack"), "dtype", "int3"), "memory_pack/dtype");
        refusedWith(o -> o.optJSONArray("backbones").optJSONObject(0).optJSONObject("methods").remove("decode"),
                "missing 'decode'");
        // org.json's own getters: a wrong type names the value and key under its path
        refusedWith(o -> put(o.optJSONArray("files").optJSONObject(0), "bytes", "many"), "files/0: Value many at bytes");
        refusedWith(o -> put(o.optJSONArray("backbones").optJSONObject(0).optJSONObject("methods").optJSONObject("decode"),
                "inputs", 3), "backbones/0/methods/decode: Value 3 at inputs");
        refusedWith(o -> put(o, "backbones", "none"), "manifest: Value none at backbones");
    }

    @Test
    void referenceProblemsAreListed() throws Exception {
        JSONObject o = new JSONObject(new String(Files.readAllBytes(TestBundle.dir().resolve("manifest.json")),
                StandardCharsets.UTF_8));
        put(o.optJSONObject("memory_pack"), "fingerprint", "ffffffffffffffffffffffffffffffff");
        o.put("memory", "none");
        BundleManifest m = BundleManifest.parse(o.toString());
        String all = String.join("; ", m.referenceProblems());
        assertTrue(all.contains("memory pack fingerprint ffff"), all);
        assertTrue(all.contains("memory=none but memory_pack is present"), all);
        assertFalse(all.contains("referenced but not listed"), all);
    }

    static void put(JSONObject o, String k, Object v) {
        try {
            o.put(k, v);
        } catch (org.json.JSONException e) {
            throw new AssertionError(e);
        }
    }
}
