package ai.meki.runtime;

import java.io.IOException;

/**
 * Every error of the memory-pack reader; the subclasses say which kind of check refused the file and
 * {@link #check} its conformance/CHECKS.md name ("pack.magic", ...), the same in every reader.
 */
public class PackException extends IOException {
    public final String check;

    public PackException(String message) {
        this("pack.io", message);
    }

    public PackException(String check, String message) {
        super(message);
        this.check = check;
    }

    /** Not a pack, an unsupported version, or an inconsistent header. */
    public static class Format extends PackException {
        public Format(String message) { super("pack.header_fields", message); }

        public Format(String check, String message) { super(check, message); }
    }

    /** The file is shorter (or longer) than its header says, or shrank while open. */
    public static final class Truncated extends Format {
        public Truncated(String message) { super("pack.file_size", message); }

        public Truncated(String check, String message) { super(check, message); }
    }

    /** A header, padding, table or data block does not match its checksum. */
    public static final class Checksum extends PackException {
        public Checksum(String check, String message) { super(check, message); }
    }

    /** The pack was folded from a different model than expected. */
    public static final class Fingerprint extends PackException {
        public Fingerprint(String message) { super("pack.fingerprint", message); }
    }

    /** A token id is out of range. */
    public static final class Token extends PackException {
        public Token(String message) { super("pack.token", message); }
    }
}
