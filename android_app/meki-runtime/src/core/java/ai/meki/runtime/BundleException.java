package ai.meki.runtime;

import java.io.IOException;

/** A bundle whose manifest or files cannot be trusted; the message names the problem. */
public class BundleException extends IOException {
    public BundleException(String message) {
        super(message);
    }
}
