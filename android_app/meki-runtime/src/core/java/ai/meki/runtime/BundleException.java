package ai.meki.runtime;

import java.io.IOException;

/**
 * A bundle whose manifest or files cannot be trusted; the message names the problem and
 * {@link #check} the conformance/CHECKS.md rule that refused it (shared with every reader).
 */
public class BundleException extends IOException {
    public final String check;

    public BundleException(String message) {
        this("manifest.schema", message);
    }

    public BundleException(String check, String message) {
        super(message);
        this.check = check;
    }
}
