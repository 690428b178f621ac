plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

val litertVersion: String by project

android {
    namespace = "dev.mdexport.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.mdexport.demo"
        minSdk = 26
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
    }

    buildTypes {
        release {
            isMinifyEnabled = false
            signingConfig = signingConfigs.getByName("debug")
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }

    androidResources {
        // Models in assets/model/ must be stored uncompressed so they can be memory-mapped.
        noCompress += listOf("tflite", "bin")
    }

    packaging {
        jniLibs.useLegacyPackaging = false
    }
}

dependencies {
    implementation(project(":core"))
    implementation("com.google.ai.edge.litert:litert:$litertVersion")
    implementation("com.google.ai.edge.litert:litert-gpu:$litertVersion")
    implementation("com.google.ai.edge.litert:litert-gpu-api:$litertVersion")
}
