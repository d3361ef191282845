package ai.meki.runtime;

import java.util.Arrays;
import java.util.HashSet;
import java.util.Iterator;
import java.util.List;
import java.util.Set;
import java.util.regex.Pattern;
import org.json.JSONArray;
import org.json.JSONObject;

/** Strict typed access to one JSON object: unknown and missing keys are errors that name the key. */
final class Json {
    private final JSONObject o;
    private final String where;

    /** Check o has every required key and no key outside required + optional. */
    Json(JSONObject o, String where, String[] required, String... optional) throws BundleException {
        this.o = o;
        this.where = where;
        for (String k : required) if (!o.has(k)) throw new BundleException(where + ": missing key '" + k + "'");
        Set<String> allowed = new HashSet<>(Arrays.asList(required));
        allowed.addAll(Arrays.asList(optional));
        for (Iterator<String> it = o.keys(); it.hasNext(); ) {
            String k = it.next();
            if (!allowed.contains(k)) throw new BundleException(where + ": unknown key '" + k + "'");
        }
    }

    static String[] keys(String... k) {
        return k;
    }

    String str(String k) throws BundleException {
        Object v = o.opt(k);
        if (!(v instanceof String) || ((String) v).isEmpty()) throw bad(k, "a non-empty string");
        return (String) v;
    }

    String optStr(String k, String dflt) throws BundleException {
        return o.has(k) ? str(k) : dflt;
    }

    String oneOf(String k, List<String> values) throws BundleException {
        String v = str(k);
        if (!values.contains(v)) throw bad(k, "one of " + values + " (got '" + v + "')");
        return v;
    }

    String matching(String k, Pattern p) throws BundleException {
        String v = str(k);
        if (!p.matcher(v).matches()) throw bad(k, "matching " + p.pattern() + " (got '" + v + "')");
        return v;
    }

    String relpath(String k) throws BundleException {
        Object v = o.opt(k);
        if (v instanceof String) {
            String why = BundleManifest.pathProblem((String) v);
            if (why != null) {
                throw new BundleException("manifest.path", where + "/" + k + ": '" + v + "' is not a clean relative path (" + why + ")");
            }
        }
        return str(k);
    }

    int positiveInt(String k) throws BundleException {
        long v = nonNegativeLong(k);
        if (v < 1 || v > Integer.MAX_VALUE) throw bad(k, "an integer in [1, 2^31)");
        return (int) v;
    }

    int nonNegativeInt(String k) throws BundleException {
        long v = nonNegativeLong(k);
        if (v > Integer.MAX_VALUE) throw bad(k, "an integer in [0, 2^31)");
        return (int) v;
    }

    long nonNegativeLong(String k) throws BundleException {
        Object v = o.opt(k);
        if (!(v instanceof Integer || v instanceof Long) || ((Number) v).longValue() < 0) throw bad(k, "an integer >= 0");
        return ((Number) v).longValue();
    }

    JSONObject object(String k) throws BundleException {
        Object v = o.opt(k);
        if (!(v instanceof JSONObject)) throw bad(k, "an object");
        return (JSONObject) v;
    }

    JSONArray array(String k) throws BundleException {
        Object v = o.opt(k);
        if (!(v instanceof JSONArray)) throw bad(k, "an array");
        return (JSONArray) v;
    }

    static JSONObject object(JSONArray a, int i, String where) throws BundleException {
        Object v = a.opt(i);
        if (!(v instanceof JSONObject)) throw new BundleException(where + "/" + i + ": must be an object");
        return (JSONObject) v;
    }

    static JSONObject object(JSONObject o, String k, String where) throws BundleException {
        Object v = o.opt(k);
        if (!(v instanceof JSONObject)) throw new BundleException(where + "/" + k + ": must be an object");
        return (JSONObject) v;
    }

    static long nonNegativeLong(JSONArray a, int i, String where) throws BundleException {
        Object v = a.opt(i);
        if (!(v instanceof Integer || v instanceof Long) || ((Number) v).longValue() < 0) {
            throw new BundleException(where + "/" + i + ": must be an integer >= 0");
        }
        return ((Number) v).longValue();
    }

    static long positiveLong(JSONArray a, int i, String where) throws BundleException {
        long v = nonNegativeLong(a, i, where);
        if (v < 1) throw new BundleException(where + "/" + i + ": must be >= 1");
        return v;
    }

    private BundleException bad(String k, String what) {
        return new BundleException(where + "/" + k + ": must be " + what);
    }
}
