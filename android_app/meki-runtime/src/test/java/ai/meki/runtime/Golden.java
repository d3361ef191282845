package ai.meki.runtime;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import org.json.JSONException;
import org.json.JSONObject;

/** The shared golden vectors (conformance/golden, from conformance/golden/make_golden.py). */
final class Golden {
    private Golden() {}

    /** conformance/golden: -Dmeki.golden=DIR (jvm_test.sh sets it), else found from the working dir. */
    static Path dir() {
        String prop = System.getProperty("meki.golden");
        if (prop != null) return Paths.get(prop);
        for (Path p = Paths.get("").toAbsolutePath(); p != null; p = p.getParent()) {
            if (Files.isRegularFile(p.resolve("conformance/golden/pack_golden.json"))) return p.resolve("conformance/golden");
        }
        throw new IllegalStateException("conformance/golden not found: pass -Dmeki.golden=DIR");
    }

    /** The conformance corpus: -Dmeki.conformance=DIR, else the golden folder's parent. */
    static Path conformance() {
        String prop = System.getProperty("meki.conformance");
        return prop != null ? Paths.get(prop) : dir().getParent();
    }

    static JSONObject spec() throws IOException, JSONException {
        return new JSONObject(new String(Files.readAllBytes(dir().resolve("pack_golden.json")), StandardCharsets.UTF_8));
    }
}
