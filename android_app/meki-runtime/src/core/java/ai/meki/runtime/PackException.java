package ai.meki.runtime;

import java.io.IOException;

/** Every error of the memory-pack reader; the subclasses say which check refused the file. */
public class PackException extends IOException {
    public PackException(String message) {
        super(message);
    }

    /** Not a pack, an unsupported version, or an inconsistent header. */
    public static class Format extends PackException {
        public Format(String message) { super(message); }
    }

    /** The file is shorter (or longer) than its header says. */
    public static final class Truncated extends Format {
        public Truncated(String message) { super(message); }
    }

    /** A header, padding, table or data block does not match its checksum. */
    public static final class Checksum extends PackException {
        public Checksum(String message) { super(message); }
    }

    /** The pack was folded from a different model than expected. */
    public static final class Fingerprint extends PackException {
        public Fingerprint(String message) { super(message); }
    }

    /** A token id is out of range. */
    public static final class Token extends PackException {
        public Token(String message) { super(message); }
    }
}
