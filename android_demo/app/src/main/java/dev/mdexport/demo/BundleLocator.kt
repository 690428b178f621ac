package dev.mdexport.demo

import android.content.Context
import android.content.res.AssetManager
import dev.mdexport.core.BundleFiles
import dev.mdexport.core.DirectoryBundleFiles
import java.io.File
import java.io.FileNotFoundException
import java.io.IOException

/** A bundle as the app sees it: a directory on disk or a folder in the APK's assets. */
sealed class BundleLocation {
    abstract val files: BundleFiles

    class Directory(val dir: File) : BundleLocation() {
        override val files = DirectoryBundleFiles(dir)
    }

    class Assets(val assets: AssetManager, val folder: String) : BundleLocation() {
        override val files = AssetBundleFiles(assets, folder)
    }
}

object BundleLocator {
    const val ASSET_FOLDER = "model"

    /** The folder `adb push out/tflite/. <here>` should target: /sdcard/Android/data/<app id>/files/model. */
    fun externalDir(context: Context): File? = context.getExternalFilesDir(null)?.let { File(it, ASSET_FOLDER) }

    /**
     * Where the bundle is: the external files dir when it holds a manifest.json (so a pushed bundle
     * overrides a packaged one), else assets/model/.
     */
    fun locate(context: Context): BundleLocation {
        val ext = externalDir(context)
        if (ext != null && File(ext, "manifest.json").isFile) return BundleLocation.Directory(ext)
        val internal = File(context.filesDir, ASSET_FOLDER)
        if (File(internal, "manifest.json").isFile) return BundleLocation.Directory(internal)
        return BundleLocation.Assets(context.assets, ASSET_FOLDER)
    }
}

/** [BundleFiles] over the APK's assets. */
class AssetBundleFiles(private val assets: AssetManager, private val folder: String) : BundleFiles {
    override val location: String get() = "assets/$folder"

    private fun full(path: String) = "$folder/$path"

    override fun exists(path: String): Boolean {
        val f = full(path)
        val parent = f.substringBeforeLast('/', "")
        val name = f.substringAfterLast('/')
        return try {
            assets.list(parent)?.contains(name) == true
        } catch (e: IOException) {
            false
        }
    }

    override fun readText(path: String): String = try {
        assets.open(full(path)).use { it.readBytes().toString(Charsets.UTF_8) }
    } catch (e: FileNotFoundException) {
        throw dev.mdexport.core.BundleException("$location/$path not found")
    }

    /** Only known for files stored uncompressed (noCompress in app/build.gradle.kts covers .tflite). */
    override fun size(path: String): Long? = try {
        assets.openFd(full(path)).use { it.length }
    } catch (e: IOException) {
        null
    }

    fun openFd(path: String) = assets.openFd(full(path))
}
