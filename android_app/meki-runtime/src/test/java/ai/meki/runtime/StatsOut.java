package ai.meki.runtime;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import org.json.JSONException;
import org.json.JSONObject;

/** Stats JSON the tests produce, kept where jvm_test.sh checks them against stats.schema.json (-Dmeki.statsOut). */
final class StatsOut {
    private StatsOut() {}

    static void write(String name, JSONObject o) throws IOException, JSONException {
        String dir = System.getProperty("meki.statsOut");
        if (dir == null) return;
        Path d = Paths.get(dir);
        Files.createDirectories(d);
        Files.write(d.resolve(name), o.toString(2).getBytes(StandardCharsets.UTF_8));
    }
}
