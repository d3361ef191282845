// AGP 8.7 (Gradle 8.9+, JDK 17): 16 KiB-aligned uncompressed native libraries by default.
plugins {
    id("com.android.application") version "8.7.3" apply false
    id("com.android.library") version "8.7.3" apply false
    id("com.android.asset-pack") version "8.7.3" apply false
}
