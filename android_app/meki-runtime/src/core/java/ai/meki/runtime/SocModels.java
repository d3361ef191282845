package ai.meki.runtime;

import java.util.ArrayList;
import java.util.List;

/** Picks the backbone compiled for this phone's SoC among a bundle's NPU backbones (one per SoC). */
public final class SocModels {
    private SocModels() {}

    /**
     * @param soc the phone's SoC model (Android's Build.SOC_MODEL, e.g. "SM8750"), or null when unknown
     * @return the backbone of target whose extra.soc is soc (case-insensitive); a target without socs is returned as is
     */
    public static BundleManifest.Backbone pick(BundleManifest m, String target, String soc) throws BundleException {
        List<BundleManifest.Backbone> same = new ArrayList<>();
        for (BundleManifest.Backbone b : m.backbones) if (b.target.equals(target)) same.add(b);
        if (same.isEmpty()) return m.backbone(target);   // throws, naming the targets the bundle has
        if (same.size() == 1 && same.get(0).soc == null) return same.get(0);
        List<String> socs = new ArrayList<>();
        for (BundleManifest.Backbone b : same) {
            if (soc != null && soc.equalsIgnoreCase(b.soc)) return b;
            socs.add(b.soc);
        }
        throw new BundleException(soc == null
                ? "this phone does not report its SoC (Build.SOC_MODEL needs Android 12+); bundle '" + m.name
                        + "' has " + target + " models for " + socs
                : "bundle '" + m.name + "' has no " + target + " model for SoC " + soc + " (has: " + socs + ")");
    }
}
