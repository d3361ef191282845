package ai.meki.runtime;

import java.nio.file.Path;
import java.nio.file.Paths;

/** The bundle scripts/make_test_bundle.py writes (manifest by the Python writer); jvm_test.sh passes -Dmeki.bundle. */
final class TestBundle {
    private TestBundle() {}

    static Path dir() {
        String p = System.getProperty("meki.bundle");
        if (p == null) throw new IllegalStateException("pass -Dmeki.bundle=DIR (made by scripts/make_test_bundle.py)");
        return Paths.get(p);
    }
}
