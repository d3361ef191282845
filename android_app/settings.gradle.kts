pluginManagement {
    repositories {
        google()
        mavenCentral()
        gradlePluginPortal()
    }
}
dependencyResolutionManagement {
    repositories {
        google()
        mavenCentral()
    }
}
rootProject.name = "meki-android"
include(":meki-runtime", ":app")
// Written by `meki bundle BUNDLE --android android_app` when the bundle is too large for the base APK.
if (file("meki_assets/build.gradle.kts").exists()) include(":meki_assets")
